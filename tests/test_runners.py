"""Every runner script on CPU (gloo) through torchrun, on the "small" synthetic dataset.

The runners take their config/output/weights from CONFIG, OUTPUT and PRETRAINED (the lines
users edit at the top of each script) and pass further arguments to the python script.
The chain is the one users run: train -> test -> genlabels -> advtrain -> attack, with the
CI configs (one epoch, tiny clips).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.stage import read_scores

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from datasets.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, preset="small", seed=0)
    return ["--opts", "DATA.ROOT", str(root), "DATA.TRAIN_FILE", str(root / "train.txt"),
            "DATA.VAL_FILE", str(root / "test.txt")]


def runner(name, num, config, output, pretrained="", extra=(), check=True):
    env = {**os.environ, "CONFIG": config, "OUTPUT": str(output), "PRETRAINED": str(pretrained),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "FRAMESHIELD_DIST_TIMEOUT": "120"}
    proc = subprocess.run(["bash", str(REPO / "runners" / f"{name}.sh"), str(num), *extra], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{name}.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("runs") / "promptmil"
    runner("train", 1, "configs/synthetic/synthetic_ci.yaml", out, extra=data)
    return out


def test_train_runner(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["epochs"] == 1 and (trained / "checkpoints" / "best.safetensors").is_file()


def test_test_runner_on_two_processes_equals_single_process_evaluation(trained, data, tmp_path):
    # the training run evaluated its best model in one process; test.sh shards the same
    # evaluation over two gloo ranks and gathers it
    best = trained / "checkpoints" / "best.safetensors"
    proc = runner("test", 2, "configs/synthetic/synthetic_ci.yaml", tmp_path, best, extra=data)
    one = json.loads((trained / "results.json").read_text())["best"]
    two = json.loads((tmp_path / "results.json").read_text())["test"]
    assert two["auc_all"] == pytest.approx(one["auc_all"], abs=1e-6)
    assert two["ap"] == pytest.approx(one["ap"], abs=1e-6)
    a, b = read_scores(trained / "scores.npz"), read_scores(tmp_path / "scores.npz")
    assert list(a["videos"]) == list(b["videos"])
    np.testing.assert_allclose(a["clean_scores"], b["clean_scores"], atol=1e-5)
    assert (tmp_path / "log_rank1.txt").is_file()  # every rank logs to its own file
    assert "gloo" in proc.stderr


def test_genlabels_then_advtrain_runners_share_the_folder(trained, data, tmp_path):
    best = trained / "checkpoints" / "best.safetensors"
    out = tmp_path / "advtrain"
    runner("genlabels", 1, "configs/synthetic/synthetic_ci_advtrain.yaml", out, best, extra=data)
    assert (out / "pseudo_labels.json").is_file()
    runner("advtrain", 1, "configs/synthetic/synthetic_ci_advtrain.yaml", out, best, extra=data)
    results = json.loads((out / "results.json").read_text())
    assert results["stage"] == "advtrain" and results["pseudo_labels"] == str(out / "pseudo_labels.json")


def test_attack_runner(trained, data, tmp_path):
    best = trained / "checkpoints" / "best.safetensors"
    runner("attack", 1, "configs/synthetic/synthetic_ci_attack.yaml", tmp_path, best,
           extra=[*data, "ATTACK.STEPS", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"clean", "adversarial", "attack", "checkpoint", "config", "timings", "segments_per_s"} <= set(results)
    assert results["attack"]["steps"] == 1


def test_runner_rejects_a_bad_process_count(tmp_path):
    proc = runner("train", "two", "configs/synthetic/synthetic_ci.yaml", tmp_path, check=False)
    assert proc.returncode == 2 and "NUM_GPUs must be a positive integer" in proc.stderr


def test_stage_scripts_report_user_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "main_attack.py", "-cfg", "configs/synthetic/no_such_config.yaml",
                           "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "ConfigError: config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_runner_refuses_more_gpus_than_visible(tmp_path):
    # a stand-in interpreter that reports one visible GPU (the probe is `python -c ...`)
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nif [[ "$1" == "-c" ]]; then echo 1; exit 0; fi\nexit 99\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run(["bash", str(REPO / "runners" / "train.sh"), "2"], env={**env, "PYTHON": str(fake)},
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "asked for 2 GPU(s) but only 1 visible" in proc.stderr
