"""The project's file layout, relative to the repository root (where DVC runs stages).

dvc.yaml declares the same paths as deps and outs.
"""

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
MODELS = Path("models")
CHECKPOINTS = MODELS / "checkpoints"
REPORTS = Path("reports")
RUN_RECORD = REPORTS / "mlflow_run.json"
HISTORY = REPORTS / "train_history.csv"
TIME_TO_QUALITY = REPORTS / "time_to_quality.csv"
METRICS = REPORTS / "metrics.json"
MODEL_CARD = REPORTS / "model_card.md"  # the registered version's description, too
OOD_ROC = REPORTS / "ood_roc"  # one ROC curve (fpr, tpr) per OOD score
FIGURES = REPORTS / "figures"

# The training dataset (train/valid/test) and the other dataset's test set (OOD checks).
TRAIN_FILE = "dataset.npz"
OOD_FILE = "ood-test.npz"
