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
KL_PER_LAYER = REPORTS / "kl_per_layer"  # z1.csv, z2.csv, ...: KL per epoch, for dvc plots
METRICS = REPORTS / "metrics.json"  # evaluate: the test-set bound, KL, active units, NLL
TEST_SCORES = Path("data/scores/test.npz")  # evaluate: per-image log p(x), for ood
OOD_METRICS = REPORTS / "ood.json"
OOD_ROC = REPORTS / "ood_roc"  # one ROC curve (fpr, tpr) per OOD score
PROBE_METRICS = REPORTS / "probe.json"
SEMISUP_METRICS = REPORTS / "semisup.json"
CALIBRATE_METRICS = REPORTS / "calibrate.json"  # every OOD score on validation data, the choice
SEMISUP_CONFUSION = REPORTS / "semisup_confusion.csv"  # actual, predicted: a dvc confusion plot
MODEL_CARD = REPORTS / "model_card.md"  # the registered version's description, too
FIGURES = REPORTS / "figures"
TIMINGS = REPORTS / "timings"  # <stage>.json: each stage's wall time, a DVC metrics file


def timings(stage: str) -> Path:
    return TIMINGS / f"{stage}.json"


# The training dataset (train/valid/test), and the other dataset's validation images (from its
# training set: calibrate) and test set (ood).
TRAIN_FILE = "dataset.npz"
OOD_FILE = "ood.npz"
