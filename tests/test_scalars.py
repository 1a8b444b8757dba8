"""Training curves: metrics.csv, TensorBoard events (read back with tensorboard's own reader),
resume truncation and plots/training.png."""
import csv
import logging

import numpy as np
import pytest

from training.scalars import CSV_NAME, GroupMean, ScalarLog, read_metrics
from utils import plots


def events(folder):
    """{tag: [(step, value)]} of the TensorBoard events under ``folder`` (tensorboard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def fill(log, steps, epoch_of=lambda s: (s - 1) // 2 + 1):
    for step in steps:
        log.train_step(step, epoch_of(step), {"total": 1.0 / step, "mil": 0.5 / step}, 1e-3 * step, 2.0 * step)
        if step % 2 == 0:
            log.evaluation(step, step // 2, {"auc_all": 0.5 + step / 100, "auc_ano": 0.4, "ap": float("nan")})


def test_csv_rows_columns_and_events(tmp_path):
    pytest.importorskip("tensorboard")
    log = ScalarLog(tmp_path, tensorboard=True)
    fill(log, range(1, 5))
    log.close()
    with open(tmp_path / CSV_NAME, newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["kind", "step", "epoch", "time"]
    assert {"loss_total", "loss_mil", "lr", "grad_norm", "auc_all", "auc_ano", "ap"} <= set(header)
    rows = read_metrics(tmp_path / CSV_NAME)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["epoch"] for r in train] == [1, 1, 2, 2]
    assert train[2]["loss_total"] == 1.0 / 3 and train[2]["lr"] == 3e-3 and train[2]["grad_norm"] == 6.0
    assert [(r["step"], r["epoch"], r["auc_all"]) for r in evals] == [(2, 1, 0.52), (4, 2, 0.54)]
    assert evals[0]["ap"] is None  # NaN (undefined metric) is an empty cell
    got = events(tmp_path / "tb")
    assert {"train/loss_total", "train/loss_mil", "train/lr", "train/grad_norm", "test/auc_all",
            "test/auc_ano"} <= set(got)
    assert [s for s, _ in got["train/lr"]] == [1, 2, 3, 4]
    assert got["train/lr"][2][1] == pytest.approx(3e-3)
    assert got["test/auc_all"] == [(2, pytest.approx(0.52)), (4, pytest.approx(0.54))]


def test_resume_drops_what_the_checkpoint_does_not_hold(tmp_path):
    """A run killed after step 5 but resumed from the checkpoint of step 4 (epoch 2) logs
    steps 5.. again: the CSV and the events end up as those of an uninterrupted run."""
    pytest.importorskip("tensorboard")
    first = ScalarLog(tmp_path, tensorboard=True)
    fill(first, range(1, 7))  # steps 1-6, evaluations at 2, 4, 6
    first.close()
    with open(tmp_path / CSV_NAME, "a") as handle:
        handle.write("train,7,4,12")  # a line torn by the kill
    resumed = ScalarLog(tmp_path, tensorboard=True, resume=(4, 2))
    assert [r["step"] for r in resumed.rows] == [1, 2, 2, 3, 4, 4]
    fill(resumed, range(5, 9))
    resumed.close()

    uninterrupted = ScalarLog(tmp_path / "full", tensorboard=True)
    fill(uninterrupted, range(1, 9))
    uninterrupted.close()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / CSV_NAME)) == strip(read_metrics(tmp_path / "full" / CSV_NAME))
    assert events(tmp_path / "tb") == events(tmp_path / "full" / "tb")


def test_fresh_run_starts_over_and_evaluation_only_appends(tmp_path):
    log = ScalarLog(tmp_path, tensorboard=False)
    fill(log, range(1, 3))
    ScalarLog(tmp_path, tensorboard=False)  # a fresh training run in the folder (--overwrite)
    assert read_metrics(tmp_path / CSV_NAME) == []
    fill(ScalarLog(tmp_path, tensorboard=False), range(1, 3))
    attack = ScalarLog(tmp_path, tensorboard=False, resume="append")
    attack.evaluation(0, 0, {"auc_all": 0.9, "auc_ano": 0.8, "ap": 0.7}, {"auc_all": 0.4, "auc_ano": 0.3, "ap": 0.2})
    rows = read_metrics(tmp_path / CSV_NAME)
    assert len(rows) == 4 and rows[-1]["adv_auc_all"] == 0.4 and rows[0].get("adv_auc_all") is None
    assert not (tmp_path / "tb").exists()


def test_without_tensorboard_the_csv_is_still_written(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.INFO, logger="FrameShield"):
        log = ScalarLog(tmp_path, tensorboard=True)
    fill(log, range(1, 3))
    assert log.paths()["tensorboard"] is None and "pip install tensorboard" in caplog.text
    assert len(read_metrics(tmp_path / CSV_NAME)) == 3


def test_group_mean():
    group = GroupMean()
    group.add({"total": 1.0, "mil": 2.0})
    group.add({"total": 3.0, "mil": 0.0})
    assert group.mean() == {"total": 2.0, "mil": 1.0}


def test_training_plot_draws_losses_lr_and_metrics(tmp_path):
    log = ScalarLog(tmp_path, tensorboard=False)
    fill(log, range(1, 9))
    path = plots.plot_training(tmp_path / "plots" / "training.png", read_metrics(tmp_path / CSV_NAME), title="t")
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 800
    green = (image[..., 1] > 100) & (image[..., 0] < 80) & (image[..., 2] < 80)  # the LR curve (tab:green)
    assert green.sum() > 50
