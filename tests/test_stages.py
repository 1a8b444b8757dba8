"""End to end: the three stage scripts on the "small" synthetic dataset with the tiny model.

Each stage runs in this process through its ``main(argv)`` (the same code path as the
command line, without a new interpreter per run) on the CI configs in configs/synthetic/.
"""
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import main as promptmil_main
import main_advtrain
import main_attack
from training import engine, steps
from utils import signals
from utils.errors import ConfigError
from training.scalars import read_metrics
from training.stage import read_scores
from tests.test_scalars import events as tb_events

pytestmark = pytest.mark.slow

CI = "configs/synthetic/synthetic_ci.yaml"
CI_ADV = "configs/synthetic/synthetic_ci_advtrain.yaml"
CI_ATTACK = "configs/synthetic/synthetic_ci_attack.yaml"


@pytest.fixture(scope="module")
def data_opts(tmp_path_factory):
    from datasets.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, preset="small", seed=0)
    return ["DATA.ROOT", str(root), "DATA.TRAIN_FILE", str(root / "train.txt"),
            "DATA.VAL_FILE", str(root / "test.txt")]


def run(entry, config, output, data_opts, *flags, opts=()):
    argv = ["-cfg", config, "--output", str(output), *flags, "--opts", *data_opts, *opts]
    assert entry.main(argv) == 0


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, data_opts):
    """One epoch of PromptMIL training; returns its output folder."""
    out = tmp_path_factory.mktemp("promptmil")
    run(promptmil_main, CI, out, data_opts)
    return out


def test_promptmil_trains_and_tests(stage1, data_opts, tmp_path):
    results = json.loads((stage1 / "results.json").read_text())
    assert results["stage"] == "promptmil" and results["epochs"] == 1 and results["steps"] == 3
    assert len(results["history"]) == 1 and results["best"]["epoch"] == 1
    assert 0.0 <= results["best"]["auc_all"] <= 1.0
    best = stage1 / "checkpoints" / "best.safetensors"
    assert results["checkpoint"] == str(best)
    state = torch.load(stage1 / "checkpoints" / "best.state.pt", weights_only=True)
    assert state["extra"]["score_threshold"] == pytest.approx(results["threshold"]["f1"])
    scores = read_scores(stage1 / "scores.npz")
    assert len(scores["videos"]) == 8 and scores["clean_scores"].shape == scores["seg_starts"].shape
    assert (stage1 / "config.yaml").is_file() and (stage1 / "log_rank0.txt").is_file()
    # training curves: one row per optimizer step and per evaluation, the same in the events
    rows = read_metrics(stage1 / "metrics.csv")
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["grad_norm"] > 0 and r["lr"] > 0 for r in train)
    assert {"loss_total", "loss_mil", "loss_smooth", "loss_sparse"} <= set(train[0])
    (evaluation,) = [r for r in rows if r["kind"] == "eval"]
    assert (evaluation["step"], evaluation["epoch"]) == (3, 1)
    assert evaluation["auc_all"] == pytest.approx(results["best"]["auc_all"])
    assert results["scalars"] == {"metrics_csv": str(stage1 / "metrics.csv"), "tensorboard": str(stage1 / "tb")}
    got = tb_events(stage1 / "tb")
    assert [s for s, _ in got["train/loss_total"]] == [1, 2, 3]
    assert got["test/auc_all"][0][1] == pytest.approx(results["best"]["auc_all"])
    assert results["plots"]["training"] == str(stage1 / "plots" / "training.png")
    assert (stage1 / "plots" / "training.png").is_file()

    # --only_test of the best checkpoint reproduces the metrics of its evaluation in training
    run(promptmil_main, CI, tmp_path, data_opts, "--only_test", "--pretrained", str(best))
    tested = json.loads((tmp_path / "results.json").read_text())
    assert tested["test"]["auc_all"] == pytest.approx(results["best"]["auc_all"], abs=1e-6)
    assert tested["checkpoint"] == str(best)
    (row,) = read_metrics(tmp_path / "metrics.csv")
    assert row["kind"] == "eval" and row["auc_all"] == pytest.approx(tested["test"]["auc_all"])
    assert (tmp_path / "plots" / "roc.png").is_file() and len(list((tmp_path / "plots").glob("scores_*.png"))) == 8
    np.testing.assert_allclose(read_scores(tmp_path / "scores.npz")["clean_scores"], scores["clean_scores"],
                               atol=1e-6)


def test_pseudo_labels_then_adversarial_training(stage1, data_opts, tmp_path, monkeypatch):
    best = str(stage1 / "checkpoints" / "best.safetensors")
    srd_always = ["ADV_TRAIN.SRD_PROB", "1.0"]  # SRD on every normal video, in both runs (same config)
    run(main_advtrain, CI_ADV, tmp_path, data_opts, "--only_test", "--pretrained", best, opts=srd_always)
    labels = json.loads((tmp_path / "pseudo_labels.json").read_text())
    train_paths = [line.split()[0] for line in open(data_opts[3])]
    assert sorted(labels) == sorted(train_paths)  # keyed by video path, every training video
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["videos"] == 12 and summary["checkpoint"] == best
    entry = next(iter(labels.values()))
    assert len(entry["frame_inds"]) == len(entry["labels"]) and len(entry["frame_inds"][0]) == 2

    # make sure SRD runs and both label sources show up in the clip labels the step uses
    seen = []
    original = steps.advtrain_clip_labels

    def spy(batch, cfg, pseudo=None):
        out = original(batch, cfg, pseudo)
        seen.append((batch, out))
        return out

    monkeypatch.setattr(steps, "advtrain_clip_labels", spy)
    run(main_advtrain, CI_ADV, tmp_path, data_opts, "--pretrained", best, opts=srd_always)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stage"] == "advtrain" and results["epochs"] == 1
    assert results["pseudo_labels"] == str(tmp_path / "pseudo_labels.json")
    assert (tmp_path / "checkpoints" / "last.safetensors").is_file()
    srd_videos = anomalous_videos = 0
    for batch, clip_labels in seen:
        for i, video_label in enumerate(batch["label"].tolist()):
            if video_label == 0:
                expected = batch["pa_labels"][i] if batch["srd_applied"][i] else torch.zeros_like(clip_labels[i])
                srd_videos += int(batch["srd_applied"][i])
                assert torch.equal(clip_labels[i], expected.long())
            else:
                anomalous_videos += 1
                entry = labels[batch["path"][i]]
                firsts = [seg[0] for seg in entry["frame_inds"]]  # segments tile the video in order
                for k, clip in enumerate(batch["frame_inds"][i].tolist()):
                    holding = {max(s for s, first in enumerate(firsts) if first <= f or s == 0) for f in clip}
                    assert clip_labels[i, k] == int(any(entry["labels"][s] > 0 for s in holding))
    assert srd_videos > 0 and anomalous_videos > 0


def test_attack_reports_clean_and_adversarial(stage1, data_opts, tmp_path):
    best = str(stage1 / "checkpoints" / "best.safetensors")
    run(main_attack, CI_ATTACK, tmp_path, data_opts, "--pretrained", best, opts=["ATTACK.STEPS", "3"])
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("clean", "adversarial"):
        assert set(results[key]) == {"auc_all", "auc_ano", "ap"}
    assert results["attack"]["steps"] == 3 and results["attack"]["eps_255"] == pytest.approx(2.0)
    assert results["checkpoint"] == best and results["segments_per_s"] > 0
    assert {"config", "timings"} <= set(results)
    # the attack pushes normal segments up and anomalous ones down: the AUC falls
    assert results["adversarial"]["auc_all"] < results["clean"]["auc_all"]
    scores = read_scores(tmp_path / "scores.npz")
    assert not np.allclose(scores["clean_scores"], scores["adversarial_scores"])
    assert (tmp_path / "plots" / "roc.png").is_file()
    (row,) = read_metrics(tmp_path / "metrics.csv")
    assert row["adv_auc_all"] == pytest.approx(results["adversarial"]["auc_all"])
    assert row["auc_all"] == pytest.approx(results["clean"]["auc_all"])


def test_resume_after_stop_equals_uninterrupted(data_opts, tmp_path, monkeypatch):
    # drop path draws from the global RNG in every forward and a worker process loads the
    # data, so the resumed run matches only if RNG states and data order are restored exactly
    opts = ["TRAIN.EPOCHS", "2", "MODEL.DROP_PATH_RATE", "0.3", "DATA.NUM_WORKERS", "1"]
    run(promptmil_main, CI, tmp_path / "full", data_opts, opts=opts)

    calls = {"n": 0}
    original = steps.promptmil_step

    def stop_after_four(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # during micro-batch 4 of 6 in epoch 1: what a scheduler sends
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(steps, "promptmil_step", stop_after_four)
    try:
        run(promptmil_main, CI, tmp_path / "stopped", data_opts, opts=opts)
    finally:
        signals.reset_stop()
    monkeypatch.setattr(steps, "promptmil_step", original)
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "last.state.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["extra"]["batch_in_epoch"]) == (0, 2, 4)
    assert not (tmp_path / "stopped" / "results.json").exists()

    run(promptmil_main, CI, tmp_path / "stopped", data_opts, opts=opts)  # same folder + config: resumes
    full = load_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    resumed = load_file(tmp_path / "stopped" / "checkpoints" / "last.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert b["resumed_from"] and [h["auc_all"] for h in a["history"]] == [h["auc_all"] for h in b["history"]]
    # the curves of the resumed run are those of the uninterrupted one
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "stopped" / "metrics.csv")) == strip(read_metrics(tmp_path / "full" / "metrics.csv"))
    assert tb_events(tmp_path / "stopped" / "tb") == tb_events(tmp_path / "full" / "tb")


def test_output_folder_of_another_run_is_refused(stage1, data_opts, tmp_path):
    (tmp_path / "config.yaml").write_text((stage1 / "config.yaml").read_text())
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="TRAIN.LR"):
        run(promptmil_main, CI, tmp_path, data_opts, "--only_test", opts=["TRAIN.LR", "1e-3"])
    run(promptmil_main, CI, tmp_path, data_opts, "--only_test", "--overwrite", opts=["TRAIN.LR", "1e-3"])
    assert "test" in json.loads((tmp_path / "results.json").read_text())


def test_overwrite_starts_training_over(data_opts, tmp_path):
    opts = ["DATA.NUM_CLIPS", "2"]  # a cheaper run than the CI default
    run(promptmil_main, CI, tmp_path, data_opts, opts=opts)
    first = load_file(tmp_path / "checkpoints" / "last.safetensors")
    run(promptmil_main, CI, tmp_path, data_opts, "--overwrite", opts=[*opts, "TRAIN.LR", "1e-3"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["resumed_from"] is None and results["epochs"] == 1
    replaced = list(tmp_path.glob("checkpoints_replaced_*"))
    assert len(replaced) == 1  # the other run's checkpoints are kept, out of auto-resume's way
    kept = load_file(replaced[0] / "last.safetensors")
    assert all(torch.equal(kept[k], first[k]) for k in first)


def test_missing_pseudo_labels_name_the_fix(data_opts, tmp_path):
    from utils.errors import DataError

    with pytest.raises(DataError, match="genlabels"):
        run(main_advtrain, CI_ADV, tmp_path, data_opts)


def test_random_init_is_the_same_on_every_rank():
    """Without weights each rank builds the preset from SEED, not SEED + rank."""
    import logging
    from types import SimpleNamespace

    from utils.config import load_config_file
    from training.stage import build_model

    cfg = load_config_file(CI)
    stage = SimpleNamespace(cfg=cfg, logger=logging.getLogger("test"), device=torch.device("cpu"))
    torch.manual_seed(cfg.SEED + 0)
    rank0 = build_model(stage)
    torch.manual_seed(cfg.SEED + 1)
    after = torch.rand(3)
    torch.manual_seed(cfg.SEED + 1)
    rank1 = build_model(stage)
    for (name, a), b in zip(rank0.state_dict().items(), rank1.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(torch.rand(3), after)  # the rank's own stream is left where it was


def test_attack_report_through_main_attack(stage1, data_opts, tmp_path):
    """main_attack.py's robustness flags: the full suite (cut to a few steps), the eps
    sweep, sanity checks and robustness.md, with results.json keeping its published keys."""
    best = str(stage1 / "checkpoints" / "best.safetensors")
    run(main_attack, CI_ATTACK, tmp_path, data_opts, "--pretrained", best, "--report",
        "--strong-steps", "3", "--square-queries", "10", "--sweep-eps", "0", "2", "8",
        "--sweep-steps", "1", "3", "--transfer-from", best, opts=["ATTACK.STEPS", "3"])
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("clean", "adversarial"):
        assert set(results[key]) == {"auc_all", "auc_ano", "ap"}
    (model,) = results["robustness"].values()
    attacks = {row["attack"] for row in model["rows"]}
    assert {"pgd", "apgd-ce", "apgd-margin", "square", "transfer"} <= attacks
    assert model["sweeps"]["eps"]["eps_255"] == pytest.approx([0, 2, 8])
    assert model["sweeps"]["steps"]["steps"][-2:] == [1, 3]
    assert model["sweeps"]["eps"]["auc_all"][1] < model["sweeps"]["eps"]["auc_all"][0]
    assert {"monotone-eps", "input-gradients"} <= {check["check"] for check in model["sanity"]} and (tmp_path / "plots" / "robustness_steps.png").is_file()
    assert (tmp_path / "robustness.md").is_file() and (tmp_path / "robustness.json").is_file()
    assert (tmp_path / "plots" / "robustness_eps.png").is_file()


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
def test_compiled_training_matches_eager(data_opts, tmp_path):
    """TRAIN.COMPILE runs the same training through torch.compile (in place: the checkpoint
    keeps its keys) and ends at the same weights up to float rounding."""
    opts = ["DATA.NUM_CLIPS", "2", "TRAIN.LR", "1e-3"]  # a cheaper run than the CI default, a visible update
    run(promptmil_main, CI, tmp_path / "eager", data_opts, opts=opts)
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    run(promptmil_main, CI, tmp_path / "compiled", data_opts, opts=[*opts, "TRAIN.COMPILE", "True"])
    assert counters["stats"]["unique_graphs"] > before  # dynamo did compile graphs of the model
    eager = load_file(tmp_path / "eager" / "checkpoints" / "last.safetensors")
    compiled = load_file(tmp_path / "compiled" / "checkpoints" / "last.safetensors")
    assert set(compiled) == set(eager)
    diff = torch.cat([(eager[k].float() - compiled[k].float()).abs().flatten() for k in eager])
    # rounding, amplified by Adam where a gradient is near 0: nearly every weight equal, none
    # off by more than the 3 steps' bound (AdamW moves a weight by at most ~LR per step)
    assert float(diff.mean()) < 1e-7 and float(diff.max()) < 3 * 1e-3
    results = [json.loads((tmp_path / run_name / "results.json").read_text()) for run_name in ("eager", "compiled")]
    assert abs(results[0]["last"]["auc_all"] - results[1]["last"]["auc_all"]) < 1e-6
    log = (tmp_path / "compiled" / "log_rank0.txt").read_text()
    assert "TRAIN.COMPILE" in log
