"""The train stage's resume state: atomic, complete, and loud when damaged."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from hvae.errors import DataError, TrainingError
from hvae.model import build_model
from hvae.training import resume
from hvae.training.callbacks import Checkpoint, EpochRecorder, StopOnNonFiniteLoss

TINY = {"latent_dims": [4, 2], "hidden_dim": 8, "blocks_per_layer": 1}
IMAGES = np.random.default_rng(0).random((32, 784)).astype("float32")


class _NoMlflow(EpochRecorder):
    def __init__(self, csv_path: Path):
        keras.callbacks.Callback.__init__(self)
        self.csv_path, self.every_steps, self.rows, self._logged_step = csv_path, 10**9, [], 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.rows.append({"epoch": epoch + 1, "train_loss": float(logs["loss"])})


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model(TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def _fit(
    model,
    tmp_path: Path,
    epochs: int,
    initial: int = 0,
    every_seconds: float = 0.0,
    before_saver: tuple[keras.callbacks.Callback, ...] = (),
    **restore_from,
):
    checkpoint = Checkpoint(best=tmp_path / "models" / "model.weights.h5", monitor="loss")
    checkpoint.set_model(model)
    recorder = _NoMlflow(tmp_path / "h.csv")
    path = tmp_path / "checkpoints" / resume.STATE_FILE
    saver = resume.ResumeCheckpoint(
        path, "fp", "run-1", checkpoint, recorder, None, every_seconds=every_seconds
    )
    if restore_from:
        resume.restore(restore_from["state"], model, checkpoint, recorder, None)
    model.fit(
        IMAGES,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial,
        verbose=0,
        callbacks=[recorder, checkpoint, *before_saver, saver],
    )
    return path, checkpoint, recorder


def test_state_round_trips_everything(tmp_path: Path) -> None:
    model = _model()
    path, checkpoint, recorder = _fit(model, tmp_path, epochs=2)
    state = resume.load(path)
    assert (state.epoch, state.epochs, state.run_id, state.fingerprint) == (2, 2, "run-1", "fp")
    assert state.complete
    assert state.history == recorder.rows and len(state.history) == 2
    assert state.best_epoch == checkpoint.best_epoch and state.best_value == checkpoint.best_value
    for saved, live in zip(state.weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, live)
    assert int(state.optimizer[0]) == int(model.optimizer.iterations) == 8


def test_restore_puts_model_optimizer_and_records_back(tmp_path: Path) -> None:
    first = _model()
    path, _, _ = _fit(first, tmp_path, epochs=2)
    state = resume.load(path)
    state.epochs = 4  # as if the run had been killed after epoch 2 of 4
    second = _model(seed=1)  # different initial weights: restore must overwrite them all
    (tmp_path / "models" / "model.weights.h5").unlink()  # DVC deletes outs before a run
    _, _, recorder = _fit(second, tmp_path, epochs=4, initial=2, state=state)
    assert [r["epoch"] for r in recorder.rows] == [1, 2, 3, 4]
    assert int(second.optimizer.iterations) == 16  # 2 epochs restored + 2 more
    assert (tmp_path / "models" / "model.weights.h5").exists()
    assert resume.load(path).epoch == 4


def test_restore_refuses_a_state_of_another_architecture(tmp_path: Path) -> None:
    path, _, _ = _fit(_model(), tmp_path, epochs=1)
    keras.utils.set_random_seed(0)
    other = build_model({**TINY, "latent_dims": [4, 2, 2]})
    other.compile(optimizer=keras.optimizers.Adam(1e-3))
    other.optimizer.build(other.trainable_variables)
    checkpoint = Checkpoint(best=tmp_path / "b.weights.h5")
    checkpoint.set_model(other)
    with pytest.raises(DataError, match="does not fit the model"):
        resume.restore(resume.load(path), other, checkpoint, _NoMlflow(tmp_path / "h"), None)


class _Clock(keras.callbacks.Callback):
    """A fake resume.monotonic that moves on `step` seconds at every epoch's end."""

    def __init__(self, step: float):
        super().__init__()
        self.now, self.step = 0.0, step

    def monotonic(self) -> float:
        return self.now

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.now += self.step


@pytest.mark.parametrize(
    ("every_seconds", "saved_after"),
    [
        (0.0, [1, 2, 3, 4, 5, 6, 7]),
        (60.0, [3, 6, 7]),  # 25 s epochs: 75 s after the start, 150 s (75 after), the last
        (3600.0, [7]),
    ],
)
def test_state_is_saved_every_so_many_seconds_and_after_the_last_epoch(
    tmp_path: Path, monkeypatch, every_seconds: float, saved_after: list[int]
) -> None:
    clock = _Clock(step=25.0)
    monkeypatch.setattr(resume, "monotonic", clock.monotonic)
    saved: list[int] = []
    real_save = resume.save

    def counting_save(path: Path, state: resume.ResumeState) -> None:
        saved.append(state.epoch)
        real_save(path, state)

    monkeypatch.setattr(resume, "save", counting_save)
    path, _, _ = _fit(
        _model(), tmp_path, epochs=7, every_seconds=every_seconds, before_saver=(clock,)
    )
    assert saved == saved_after
    assert resume.load(path).complete


def test_missing_state_is_none(tmp_path: Path) -> None:
    assert resume.load(tmp_path / resume.STATE_FILE) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"garbage"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_bytes(b""),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_damaged_state_is_a_one_line_data_error(tmp_path: Path, damage) -> None:
    path, _, _ = _fit(_model(), tmp_path, epochs=1)
    damage(path)
    with pytest.raises(DataError, match=r"resume\.npz: unreadable resume checkpoint") as info:
        resume.load(path)
    assert "\n" not in str(info.value) and "delete it" in str(info.value)


def test_no_temporary_files_are_left_beside_the_state(tmp_path: Path) -> None:
    path, _, _ = _fit(_model(), tmp_path, epochs=2)
    assert sorted(p.name for p in path.parent.iterdir()) == [resume.STATE_FILE]


def test_a_non_finite_loss_stops_training_naming_epoch_and_step() -> None:
    model = _model()
    model.fit(IMAGES, batch_size=8, epochs=1, verbose=0)
    model.to_logits.bias.assign(np.full(784, np.nan, "float32"))
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 1;") as info:
        model.fit(IMAGES, batch_size=8, epochs=2, verbose=0, callbacks=[StopOnNonFiniteLoss()])
    assert "\n" not in str(info.value)
