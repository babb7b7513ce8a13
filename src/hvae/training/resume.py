"""Resume state of the train stage: everything needed to carry on after a kill.

One file, written atomically at the end of an epoch: the model's and the optimizer's
variables, the best-on-validation weights so far, and what the callbacks have recorded. DVC
keeps its folder across runs (`persist: true` in dvc.yaml); a fingerprint of the params and
data makes sure a run only continues a run of the same configuration.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic

import keras
import numpy as np

from hvae import atomic
from hvae.errors import DataError
from hvae.training.callbacks import Checkpoint, EpochRecorder, NllProbe

STATE_FILE = "resume.npz"


@dataclass
class ResumeState:
    fingerprint: str
    epoch: int  # epochs completed
    epochs: int
    run_id: str
    best_value: float
    best_epoch: int
    history: list[dict]
    probe_rows: list[dict]
    probe_seconds: float
    weights: list[np.ndarray] = field(repr=False)
    optimizer: list[np.ndarray] = field(repr=False)
    best_weights: list[np.ndarray] = field(repr=False)

    @property
    def complete(self) -> bool:
        return self.epoch >= self.epochs


_ARRAYS = ("weights", "optimizer", "best_weights")


def save(path: Path, state: ResumeState) -> None:
    meta = {k: v for k, v in vars(state).items() if k not in _ARRAYS}
    arrays = {"meta": np.array(json.dumps(meta))}
    for group in _ARRAYS:
        arrays.update({f"{group}/{i}": a for i, a in enumerate(getattr(state, group))})
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # a handle: given a name, savez would append ".npz"


def load(path: Path) -> ResumeState | None:
    """The saved state, None when there is none; a damaged file is a DataError."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            groups = {
                group: [data[f"{group}/{i}"] for i in range(_count(data.files, group))]
                for group in _ARRAYS
            }
        return ResumeState(**meta, **groups)
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: unreadable resume checkpoint ({type(exc).__name__}: {exc}); "
            "delete it to train from scratch"
        ) from None


def _count(files: list[str], group: str) -> int:
    return sum(1 for name in files if name.startswith(f"{group}/"))


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves the resume state at the end of the first epoch `every_seconds` after the last
    save (0: every epoch) and after the last epoch; list it after the callbacks it reads.

    A save writes the weights four times over (weights, Adam's two moments, the best
    weights): 37 MB for the default model, about a tenth of a 3-second epoch. A kill loses
    at most `every_seconds` plus one epoch. The last epoch always saves, so the file never
    holds an unfinished state of a run that finished.
    """

    def __init__(
        self,
        path: Path,
        fingerprint: str,
        run_id: str,
        checkpoint: Checkpoint,
        recorder: EpochRecorder,
        probe: NllProbe | None,
        every_seconds: float = 0.0,
    ):
        super().__init__()
        self.path, self.fingerprint, self.run_id = Path(path), fingerprint, run_id
        self.checkpoint, self.recorder, self.probe = checkpoint, recorder, probe
        self.every_seconds = every_seconds
        self._saved_at = monotonic()

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._saved_at = monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        last = epoch + 1 >= self.params["epochs"]
        if not last and monotonic() - self._saved_at < self.every_seconds:
            return
        save(
            self.path,
            ResumeState(
                fingerprint=self.fingerprint,
                epoch=epoch + 1,
                epochs=self.params["epochs"],
                run_id=self.run_id,
                best_value=self.checkpoint.best_value,
                best_epoch=self.checkpoint.best_epoch,
                history=self.recorder.rows,
                probe_rows=self.probe.rows if self.probe else [],
                probe_seconds=self.probe.train_seconds if self.probe else 0.0,
                weights=[np.asarray(w) for w in self.model.get_weights()],
                optimizer=[keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables],
                best_weights=self.checkpoint.best_weights or [],
            ),
        )
        self._saved_at = monotonic()


def restore(
    state: ResumeState,
    model: keras.Model,
    checkpoint: Checkpoint,
    recorder: EpochRecorder,
    probe: NllProbe | None,
) -> None:
    """Put model, optimizer and callbacks back where the saved epoch left them."""
    variables = model.optimizer.variables
    if len(state.weights) != len(model.weights) or len(state.optimizer) != len(variables):
        raise DataError("resume checkpoint does not fit the model; delete it to start over")
    if state.best_weights:
        model.set_weights(state.best_weights)
        checkpoint.save_best(state.best_value, state.best_epoch)
    model.set_weights(state.weights)
    for variable, value in zip(variables, state.optimizer, strict=True):
        variable.assign(value)
    recorder.rows = list(state.history)
    if probe is not None:
        probe.rows, probe.train_seconds = list(state.probe_rows), state.probe_seconds
