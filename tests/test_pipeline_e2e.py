"""The real pipeline, end to end: `dvc exp run` in a throwaway git repo on real MNIST.

Needs HVAE_DATA_DIR (a folder with mnist/ and fashion-mnist/ IDX files) because these
machines cannot reach the public mirrors; `.ci/run` sets it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hvae.data import prepared

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA_DIR = os.environ.get("HVAE_DATA_DIR")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA_DIR, reason="HVAE_DATA_DIR is not set (see README)"),
]

TINY = [
    "train.epochs=1",
    "evaluate.iw_samples=10",
    "evaluate.chunk_size=10",
    "evaluate.llr_samples=4",
    "evaluate.recon_draws=2",
    "evaluate.probe_repeats=1",
    "model.hidden_dim=32",
    # Three layers, whatever the default's depth: the checks below name z1..z3, LLR>1, LLR>2.
    "model.latent_dims=[32,16,8]",
    "train.batch_size=250",
    "train.kl_warmup_epochs=1",
    "train.log_every_steps=100",
    "render.n_samples=16",
    "render.hierarchy_rows=2",
    # A 2 000-image graph: the neighbour search is quadratic in it.
    "semisup.graph_images=2000",
    "semisup.draws=2",
    "calibrate.fit_images=500",
    "calibrate.validation_images=500",
    "calibrate.reference_images=2000",
]


def tiny_params() -> dict:
    """TINY as `_new_repo`'s params: each key with its value parsed as YAML."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in TINY)}


STAGES = ("prepare", "train", "semisup", "calibrate", "evaluate", "ood", "probe", "render")
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config"]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    repo, env = _new_repo(tmp_path_factory.mktemp("e2e") / "repo")
    args = [str(BIN / "dvc"), "exp", "run"]
    for setting in TINY:
        args += ["-S", setting]
    result = _run(args, repo, env)
    return repo, env, result.stdout + result.stderr


def _new_repo(repo: Path, params: dict | None = None) -> tuple[Path, dict[str, str]]:
    """A git repo holding the project's files, committed; `params` edits params.yaml."""
    repo.mkdir()
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    if params:
        import yaml

        values = yaml.safe_load((repo / "params.yaml").read_text())
        for key, value in params.items():
            section, name = key.split(".")
            values[section][name] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(values))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HVAE_DATA_DIR=str(Path(DATA_DIR).resolve()),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.invalid",
    )
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline"], repo, env)
    return repo, env


def test_every_stage_ran(pipeline_run) -> None:
    repo, env, output = pipeline_run
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
        assert f"hvae {stage}: done" in output
        # Each stage's wall time, a metrics file of its own.
        timing = json.loads((repo / "reports/timings" / f"{stage}.json").read_text())
        assert 0 < timing["seconds"] < 1800, stage
    lock = (repo / "dvc.lock").read_text()
    for stage in STAGES:
        assert f"  {stage}:" in lock
    # Progress of the long steps, one line per tenth in a log (DVC's stdout is no terminal).
    assert "evaluate: test NLL, k=10: 10,000/10,000 (100 %)" in output
    assert "ood: fashion-mnist test NLL, k=10: 1,000/10,000 (10 %)" in output
    assert "probe: encoding images:" in output and "(100 %)" in output
    assert "semisup: neighbour search: 12,000/12,000 (100 %)" in output
    # 3 bounds and 3 reconstruction terms for each of 1 500 images (fit, valid, OOD valid).
    calibrate = "calibrate: 3 bounds at 4 samples, 3 reconstruction terms at 2 draws"
    assert f"{calibrate}: 9,000/9,000 (100 %)" in output
    assert "; served neighbours: AUROC " in output  # ood names the score it serves
    shown = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], repo, env).stdout)
    files = {name for data in shown.values() for name in data.get("data", {})}
    expected = {"reports/metrics.json", "reports/ood.json", "reports/probe.json"}
    expected |= {"reports/semisup.json", "reports/calibrate.json"}
    expected |= {f"reports/timings/{stage}.json" for stage in STAGES}
    assert expected <= files, files


def test_kl_plot_has_a_file_per_layer(pipeline_run) -> None:
    repo, env, _ = pipeline_run
    layers = sorted(p.name for p in (repo / "reports/kl_per_layer").iterdir())
    assert layers == ["z1.csv", "z2.csv", "z3.csv"]
    for name in layers:
        rows = (repo / "reports/kl_per_layer" / name).read_text().splitlines()
        assert rows[0] == "epoch,train_kl,val_kl" and len(rows) == 2
    shown = _run([str(BIN / "dvc"), "plots", "show", "--json"], repo, env).stdout
    plotted = json.loads(shown)
    assert not plotted.get("errors"), plotted["errors"]
    for name in layers:  # a plot per layer: the validation KL against the epoch
        (plot,) = plotted["data"][f"reports/kl_per_layer/{name}"]
        assert plot["content"]["encoding"]["x"]["field"] == "epoch"
        assert '"y": {"field": "val_kl"' in json.dumps(plot["content"]["layer"])
        (row,) = plot["content"]["data"]["values"]
        assert float(row["val_kl"]) >= 0


def test_metrics_are_consistent(pipeline_run) -> None:
    repo, _, _ = pipeline_run
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert math.isfinite(metrics["test_nll"])
    assert metrics["iw_samples"] == 10
    assert metrics["test_images"] == 10_000
    # The IW estimate is a tighter bound than the ELBO, so NLL <= -ELBO.
    assert metrics["test_nll"] <= -metrics["test_elbo"]
    for layer, dim in enumerate((32, 16, 8), start=1):
        assert metrics[f"test_kl_z{layer}"] >= 0
        assert metrics[f"active_units_z{layer}"] in range(dim + 1)
    _check_ood_and_probes(repo)


# Every OOD score of the 3-layer model: the likelihood, two ratios of each kind, two
# typicalities and the neighbour distance.
SCORES = ("likelihood", "llr_k1", "llr_k2", "recon_k1", "recon_k2", "typicality")
SCORES += ("typicality_recon", "neighbours")
# The score params.yaml serves (calibrate.score); TINY leaves it.
SERVED = "neighbours"


def _check_ood_and_probes(repo: Path) -> None:
    """OOD metrics and ROC curves for every score; probes per layer."""
    metrics = json.loads((repo / "reports/ood.json").read_text())
    assert math.isfinite(metrics["ood_test_nll"])
    for score in SCORES:
        assert 0.0 <= metrics[f"ood_{score}_auroc"] <= 1.0
        assert 0.0 < metrics[f"ood_{score}_auprc"] <= 1.0
        assert 0.0 <= metrics[f"ood_{score}_fpr80"] <= 1.0
        rows = (repo / "reports/ood_roc" / f"{score}.csv").read_text().splitlines()
        assert rows[0] == "fpr,tpr" and rows[1] == "0.0,0.0" and rows[-1] == "1.0,1.0"
        assert len(rows) > 100
    assert "ood_llr_k3_auroc" not in metrics  # k = L would infer nothing from x
    assert "ood_recon_k3_auroc" not in metrics
    # The served detector: chosen on validation data, reported on the test sets.
    served = json.loads((repo / "models/ood_detector.json").read_text())
    calibrate = json.loads((repo / "reports/calibrate.json").read_text())
    # params.yaml's score; TINY's samples and draws.
    assert (served["score"], served["samples"], served["draws"]) == (SERVED, 4, 2)
    # TINY's reference and params.yaml's k, the images 784 bits each in the npz beside it.
    assert (served["reference_images"], served["neighbours"]) == (2000, 50)
    with np.load(repo / "models/ood_reference.npz") as stored:
        assert stored["reference"].shape == (2000, 98) and int(stored["pixels"]) == 784
    assert all(
        0.0 <= calibrate[f"calibrate_{s}_{m}"] <= 1.0 for s in SCORES for m in ("auroc", "auprc")
    )
    assert calibrate["calibrate_chosen_threshold"] == served["threshold"]
    assert 0.95 <= calibrate["calibrate_chosen_tpr"] <= 0.96  # of 500 validation images
    assert metrics["ood_served_auroc"] == metrics[f"ood_{SERVED}_auroc"]
    assert 0.85 < metrics["ood_served_tpr"] <= 1.0  # the threshold on 10 000 unseen images
    assert 0.0 <= metrics["ood_served_flagged"] <= 1.0
    metrics = json.loads((repo / "reports/probe.json").read_text())
    for n in (100, 1000):
        for features in ("z1", "z2", "z3", "all", "pixels"):
            # Ten classes: a probe that learned anything beats chance (0.1).
            assert 0.1 < metrics[f"probe_{features}_n{n}"] <= 1.0, (features, n)
    metrics = json.loads((repo / "reports/semisup.json").read_text())
    for n in (100, 1000):
        # Below chance (0.9 error for ten classes) even after one epoch on a 2 000-image graph.
        assert 0.0 <= metrics[f"semisup_error_n{n}"] < 0.8, n
    rows = (repo / "reports/semisup_confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 10_001
    predicted = [int(row.split(",")[1]) for row in rows[1:]]
    error = sum(int(r.split(",")[0]) != p for r, p in zip(rows[1:], predicted, strict=True))
    # The confusion file is the first draw of 100 labels, one of the draws averaged.
    assert (
        abs(error / 10_000 - metrics["semisup_error_n100"])
        <= metrics["semisup_error_n100_std"] + 1e-9
    )
    assert set(predicted) <= set(range(10))


def test_mlflow_run_and_registry(pipeline_run) -> None:
    from mlflow.tracking import MlflowClient

    repo, _, _ = pipeline_run
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = json.loads((repo / "reports/mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "1"
    for split in ("train", "val"):
        for layer in (1, 2):
            history = client.get_metric_history(run_id, f"{split}/kl_z{layer}")
            assert [m.step for m in history] == [1]
    assert "test/nll" in run.data.metrics
    for key in ("ood/likelihood_auroc", "ood/llr_k1_auroc", "ood/llr_k2_fpr80", "probe/z3_n100"):
        assert key in run.data.metrics, key
    # 58 000 images / batch 250 = 232 steps; per-step metrics every 100 steps.
    manifest = prepared.read_manifest(repo / "data/prepared")
    steps = manifest["counts"]["train"] // 250
    assert [m.step for m in client.get_metric_history(run_id, "step/elbo")] == [100, 200]
    # beta = step/steps; each point is the mean over the 10 steps of its compiled call
    # (steps 91-100 and 191-200), not the epoch's running mean (about 0.22 at step 100).
    betas = [m.value for m in client.get_metric_history(run_id, "step/beta")]
    assert betas == pytest.approx([95.5 / steps, 195.5 / steps], abs=1e-4)
    assert client.get_metric_history(run_id, "train/skip_rate")[0].value == 0.0
    assert client.get_metric_history(run_id, "train/grad_norm")[0].value > 0.0
    # Time to quality: one probe at the last (only) epoch, in MLflow and in the CSV.
    (probe,) = client.get_metric_history(run_id, "val/nll_k100")
    rows = (repo / "reports/time_to_quality.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_seconds,val_nll" and len(rows) == 2
    assert float(rows[1].split(",")[2]) == pytest.approx(probe.value, rel=1e-6)
    assert 0 < float(rows[1].split(",")[1]) < 600
    assert run.data.tags["data_digest"]
    assert run.inputs.dataset_inputs, "the training data is logged as a run input"

    versions = client.search_model_versions("name = 'hvae-mnist'")
    assert [v.run_id for v in versions] == [run_id]
    version = versions[0]
    assert float(version.tags["test_nll"]) == pytest.approx(run.data.metrics["test/nll"], abs=1e-3)
    for tag in ("git_commit", "params_digest", "data_digest"):
        assert version.tags[tag] not in ("", "unknown")
    # The version is the files the run trained: one digest in the record, the run and the tag.
    record = json.loads((repo / "reports/mlflow_run.json").read_text())
    assert version.tags["model_digest"] == run.data.tags["model_digest"] == record["model_digest"]
    assert (version.tags["dataset"], version.tags["ood_dataset"]) == ("mnist", "fashion-mnist")
    # Lineage and headline metrics on the version; every metric on the run and its model.
    assert "probe_z1_n100" not in version.tags and "ood_llr_k1_auroc" not in version.tags
    # ood and probe add their headline numbers (two are gate metrics) and their sections to
    # the card render writes.
    ood = json.loads((repo / "reports/ood.json").read_text())
    probe = json.loads((repo / "reports/probe.json").read_text())
    assert float(version.tags["ood_likelihood_auroc"]) == pytest.approx(
        ood["ood_likelihood_auroc"], abs=1e-4
    )
    assert float(version.tags["ood_test_nll"]) == pytest.approx(ood["ood_test_nll"], abs=1e-3)
    assert version.tags["ood_llr_samples"] == "4"
    # The packed OOD detector, as calibrate wrote it.
    served = json.loads((repo / "models/ood_detector.json").read_text())
    assert version.tags["ood_score"] == served["score"] and version.tags["ood_samples"] == "4"
    assert version.tags["ood_draws"] == "2" and version.tags["ood_recon_draws"] == "2"
    assert float(version.tags["ood_threshold"]) == pytest.approx(served["threshold"], rel=1e-5)
    assert float(version.tags["ood_served_auroc"]) == pytest.approx(
        ood["ood_served_auroc"], abs=1e-4
    )
    assert float(version.tags["probe_all_n100"]) == pytest.approx(probe["probe_all_n100"], abs=1e-4)
    # semisup ran before the version existed: evaluate tags it with what semisup logged.
    semisup = json.loads((repo / "reports/semisup.json").read_text())
    for budget in (100, 1000):
        error = semisup[f"semisup_error_n{budget}"]
        assert float(version.tags[f"semisup_error_n{budget}"]) == pytest.approx(error, abs=1e-4)
    assert run.data.metrics["semisup/error_n100"] == pytest.approx(semisup["semisup_error_n100"])
    card = (repo / "reports/model_card.md").read_text()
    assert version.description == card
    assert "## Out-of-distribution detection against Fashion-MNIST" in card
    assert "## Linear probes" in card
    assert "## Semi-supervised classification (test error)" in card
    assert f"| 100 | {semisup['semisup_error_n100']:.2%} ± " in card
    assert f"| likelihood | {ood['ood_likelihood_auroc']:.3f} |" in card
    assert f"as `ood_score` and flags `is_ood` above {version.tags['ood_threshold']}" in card
    assert card.startswith(f"# hvae-mnist version {version.version}\n")
    assert run_id in card and version.tags["git_commit"] in card
    assert f"| `prepare.validation_size` | {manifest['counts']['valid']} |" in card
    model = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert model.name == "hvae-mnist"
    assert {"test/nll", "probe/z3_n100", "ood/llr_k2_auroc"} <= {m.key for m in model.metrics}

    artifacts = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"figures/hierarchy.png", "figures/ood_roc.png", "figures/traversal_z3.png"} <= artifacts
    rocs = {a.path for a in client.list_artifacts(run_id, "ood_roc")}
    assert rocs == {f"ood_roc/{s}.csv" for s in SCORES}


def test_figures_are_pngs(pipeline_run) -> None:
    repo, _, _ = pipeline_run
    names = ["reconstructions", "samples", "hierarchy", "loss_curves", "layer_kl"]
    names += ["time_to_quality", "ood_roc", "probe_accuracy"]
    names += ["traversal_z1", "traversal_z2", "traversal_z3", "hierarchy_z2", "hierarchy_z3"]
    for name in names:
        data = (repo / "reports/figures" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2_000, name


def test_dvc_status_clean_and_second_repro_does_nothing(pipeline_run) -> None:
    repo, env, _ = pipeline_run
    dvc = str(BIN / "dvc")
    assert json.loads(_run([dvc, "status", "--json"], repo, env).stdout) == {}
    again = _run([dvc, "repro"], repo, env).stdout
    assert "Running stage" not in again


def test_an_ood_param_reruns_only_the_ood_stages(pipeline_run) -> None:
    """evaluate.llr_samples is read by calibrate and ood: evaluate re-runs (it packs the
    detector), train, semisup and probe do not; the NLL, the probes and the version stay."""
    from mlflow.tracking import MlflowClient

    repo, env, _ = pipeline_run
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (packed,) = client.search_model_versions("name = 'hvae-mnist'")
    metrics_before = (repo / "reports/metrics.json").read_bytes()
    probe_before = (repo / "reports/probe.json").read_bytes()
    args = [str(BIN / "dvc"), "exp", "run"]
    for setting in [*TINY, "evaluate.llr_samples=5"]:
        args += ["-S", setting]
    output = _run(args, repo, env).stdout
    rerun = set(re.findall(r"Running stage '(\w+)'", output))
    assert rerun == {"calibrate", "evaluate", "ood", "render"}
    # The version keeps the detector it was packed with, and evaluate says so.
    assert "keeps the classifier and OOD detector it was logged with" in output
    assert (repo / "reports/metrics.json").read_bytes() == metrics_before
    assert (repo / "reports/probe.json").read_bytes() == probe_before
    assert json.loads((repo / "reports/ood.json").read_text())["ood_llr_samples"] == 5
    (version,) = client.search_model_versions("name = 'hvae-mnist'")
    assert version.tags["ood_llr_samples"] == "5"
    # What the version's packed detector uses: calibrate's re-run does not re-tag it.
    for key in ("ood_samples", "ood_draws", "ood_score", "ood_threshold", "packed_digest"):
        assert version.tags[key] == packed.tags[key], key
    assert version.tags["ood_samples"] == "4"
    assert version.description == (repo / "reports/model_card.md").read_text()
    assert "| `evaluate.llr_samples` | 5 |" in version.description


def test_train_change_reruns_train_onwards_never_prepare(pipeline_run) -> None:
    """Runs last: it trains a second experiment in the same workspace."""
    repo, env, _ = pipeline_run
    args = [str(BIN / "dvc"), "exp", "run"]
    for setting in [*TINY[1:], "train.epochs=2"]:
        args += ["-S", setting]
    output = _run(args, repo, env).stdout
    assert "Stage 'prepare' didn't change, skipping" in output
    assert set(re.findall(r"Running stage '(\w+)'", output)) == set(STAGES) - {"prepare"}

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {v.run_id for v in client.search_model_versions("name = 'hvae-mnist'")}
    assert len(runs) == 2, "one registered version per training run, no duplicates"


# -- the registry around the pipeline: runs after the second experiment above ---------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server did not answer {url} within {seconds} s")


def _stop(process: subprocess.Popen) -> None:
    # The server runs in its own session; stop the whole group (mlflow forks workers).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _hvae(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "hvae"), *args], cwd=repo, env=env, capture_output=True, text=True
    )


def _test_frame(repo: Path, n: int = 5):
    import pandas as pd

    from hvae.data.prepared import load_split

    test = load_split(repo / "data/prepared", "dataset.npz", "test")
    pixels = test.flat()[:n].astype("float64") * 255.0
    return pd.DataFrame(pixels, columns=[f"p{i}" for i in range(784)])


def test_promote_refuse_rollback_load_and_serve(pipeline_run, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    repo, env, _ = pipeline_run
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    nll = {
        str(v.version): float(v.tags["test_nll"])
        for v in client.search_model_versions("name = 'hvae-mnist'")
    }
    better, worse = sorted(nll, key=nll.get)
    assert nll[better] < nll[worse]

    def champion() -> str:
        return str(client.get_registered_model("hvae-mnist").aliases["champion"])

    listing = _hvae(repo, env, "models")
    assert listing.returncode == 0 and "test_nll" in listing.stdout

    assert _hvae(repo, env, "promote", "--version", worse).returncode == 0  # alias was unset
    promoted = _hvae(repo, env, "promote", "--version", better)
    assert promoted.returncode == 0, promoted.stderr
    assert champion() == better
    refused = _hvae(repo, env, "promote", "--version", worse)
    assert refused.returncode == 1
    assert f"{nll[worse]:.4f}" in refused.stderr and f"{nll[better]:.4f}" in refused.stderr
    assert champion() == better
    back = _hvae(repo, env, "rollback")
    assert back.returncode == 0 and champion() == worse
    assert _hvae(repo, env, "promote").returncode == 0  # the newest, and better, version again
    assert champion() == better
    table = _hvae(repo, env, "models").stdout
    assert any(line.split()[0] == better and "champion" in line for line in table.splitlines()[2:])

    # Load @champion in a fresh process, outside the repo: only the installed package.
    frame = _test_frame(repo)
    frame.to_json(tmp_path / "input.json", orient="split", index=False)
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/hvae-mnist@champion')\n"
        "x = pd.read_json(sys.argv[1], orient='split')\n"
        "print(json.dumps(m.predict(x).to_dict(orient='list')))\n"
    )
    load_env = {**env, "MLFLOW_TRACKING_URI": uri}
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "input.json")],
        cwd=tmp_path, env=load_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    in_process = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(in_process["elbo"]) == len(frame)
    assert all(math.isfinite(v) and v < 0 for v in in_process["iw_log_likelihood"])
    # semisup's classifier travels with the version.
    assert set(in_process["class"]) <= set(range(10))
    assert all(0.1 <= p <= 1.0 for p in in_process["class_probability"])
    # And calibrate's detector: in-distribution test images, mostly accepted.
    assert all(math.isfinite(v) for v in in_process["ood_score"])
    assert set(in_process["is_ood"]) <= {0, 1} and sum(in_process["is_ood"]) < len(frame) / 2

    # Serve the same alias and ask over HTTP: the same numbers.
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/hvae-mnist@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=load_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", server)
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        _stop(server)
    for key in ("elbo", "iw_log_likelihood", "class_probability", "ood_score"):
        assert [row[key] for row in served] == pytest.approx(in_process[key], rel=1e-6)
    assert [row["class"] for row in served] == in_process["class"]
    assert [row["is_ood"] for row in served] == in_process["is_ood"]


def test_ui_shows_runs_figures_and_registry(pipeline_run) -> None:
    """Runs after the promotion test: the alias is set."""
    repo, env, _ = pipeline_run
    port = _free_port()
    ui = subprocess.Popen(
        [str(BIN / "hvae"), "ui", "--port", str(port)],
        cwd=repo, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        assert ui.stdout.readline().startswith(f"ui: MLflow UI at {base}")
        assert "workflowType=machine_learning" in ui.stdout.readline()
        _wait_for(f"{base}/health", ui)
        api = f"{base}/api/2.0/mlflow"
        experiment = _get(f"{api}/experiments/get-by-name?experiment_name=hvae-mnist")
        experiment_id = experiment["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{api}/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        assert len(runs) == 2
        run = runs[0]
        run_id = run["info"]["run_id"]
        keys = {m["key"] for m in run["data"]["metrics"]}
        assert {"train/elbo", "val/elbo", "val/recon", "val/kl_z1", "val/kl_z3", "test/nll"} <= keys
        assert {p["key"] for p in run["data"]["params"]} >= {"train.epochs", "model.latent_dims"}
        history = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=val/elbo")
        assert len(history["metrics"]) >= 1
        listed = _get(f"{api}/artifacts/list?run_id={run_id}&path=figures")
        assert "figures/hierarchy.png" in {f["path"] for f in listed["files"]}
        with urllib.request.urlopen(
            f"{base}/get-artifact?path=figures/hierarchy.png&run_uuid={run_id}", timeout=10
        ) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
        model = _get(f"{api}/registered-models/get?name=hvae-mnist")["registered_model"]
        assert {a["alias"] for a in model["aliases"]} == {"champion"}
        version = _get(f"{api}/registered-models/alias?name=hvae-mnist&alias=champion")
        tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
        assert {"test_nll", "git_commit", "promotion.champion.time"} <= set(tags)
    finally:
        _stop(ui)


# -- faults: runs last, it re-runs the whole pipeline ------------------------------------


def test_a_second_dvc_repro_fails_at_once_and_nothing_is_corrupted(pipeline_run) -> None:
    repo, env, _ = pipeline_run
    dvc = str(BIN / "dvc")
    log = repo.parent / "first-repro.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            [dvc, "repro", "--force"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "Running stage" not in log.read_text():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first dvc repro never started a stage"
            time.sleep(0.2)
        started = time.monotonic()
        second = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
        waited = time.monotonic() - started
        assert first.poll() is None, "the first run ended before the second was tried"
    finally:
        code = first.wait(timeout=600)
    assert second.returncode != 0
    # DVC refuses either at its repo lock or at the per-output lock of the running stage,
    # naming the process that holds it.
    message = second.stderr + second.stdout
    assert "Unable to acquire lock" in message or (
        "is busy, it is being blocked by" in message and str(first.pid) in message
    ), message
    assert waited < 30, f"the second dvc repro took {waited:.0f} s to give up"
    assert code == 0, log.read_text()
    assert json.loads(_run([dvc, "status", "--json"], repo, env).stdout) == {}
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["test_nll"] > 0


def test_unreachable_tracking_server_stops_train_before_it_trains(pipeline_run) -> None:
    repo, env, _ = pipeline_run
    tracked = ["dvc.lock", "reports/mlflow_run.json", "models/model.weights.h5"]
    before = {name: (repo / name).read_bytes() for name in tracked}
    uri = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "hvae"), "train"],
        cwd=repo,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"hvae train: error: MLFLOW_TRACKING_URI={uri}: the tracking server does not answer"
        )
    )
    assert "Epoch 1/" not in result.stdout
    assert time.monotonic() - started < 60
    assert {name: (repo / name).read_bytes() for name in tracked} == before


def test_corrupt_weights_stop_evaluate_with_nothing_written_or_registered(pipeline_run) -> None:
    from mlflow.tracking import MlflowClient

    repo, env, _ = pipeline_run
    weights = repo / "models" / "model.weights.h5"
    metrics = repo / "reports" / "metrics.json"
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = len(client.search_model_versions("name = 'hvae-mnist'"))
    original, before = weights.read_bytes(), metrics.read_bytes()
    weights.chmod(0o644)  # DVC may link outs read-only from its cache
    weights.write_bytes(original[: len(original) // 2])
    try:
        result = subprocess.run(
            [str(BIN / "hvae"), "evaluate"], cwd=repo, env=env, capture_output=True, text=True
        )
    finally:
        weights.write_bytes(original)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("hvae evaluate: error: models/model.weights.h5: cannot load weights")
    )
    assert metrics.read_bytes() == before
    assert len(client.search_model_versions("name = 'hvae-mnist'")) == versions
