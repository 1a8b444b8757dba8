"""Issue 7, points 1, 2 and 4 (NaN loss) on real stage runs: killed and resumed training
ends with the weights of an uninterrupted run; SIGTERM stops cleanly (one rank or two);
a non-finite loss stops with the step and keeps the last good checkpoint.

Every run is a separate interpreter (``drive`` below, started with ``python -c``) so SIGKILL
is real; runs are as small as the stages allow: the tiny model, 8 training and 4 test
videos of the "small" synthetic preset, clips of 2 frames, 4 micro-batches per epoch,
one torch thread (bitwise-deterministic on CPU). The kill points are drawn from a seeded
generator (printed on failure), so a failure can be replayed.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training import checkpoint as ckpt

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CI = "configs/synthetic/synthetic_ci.yaml"
CI_ADV = "configs/synthetic/synthetic_ci_advtrain.yaml"
SMALL = ["DATA.NUM_CLIPS", "2", "TRAIN.ACCUMULATION_STEPS", "1", "MODEL.DROP_PATH_RATE", "0.2",
         "TRAIN.AUTO_RESUME", "True", "PRINT_FREQ", "100"]
KILL_SEED = 2025


def install_kill(kill, setattr=setattr):
    """Arrange for this process to be stopped at a chosen point (``setattr`` patches modules).

    kill: None; ("step", n, "SIGKILL"|"SIGTERM") sends the signal to this process group (this
    process and its data-loader workers) just before its n-th training micro-batch (counted
    in this process); ("write", name, n) SIGKILLs it
    just before the n-th rename of a file called ``name`` into place (a save half done);
    ("nan", n) makes the n-th micro-batch's loss NaN; ("raise", n) raises a RuntimeError there
    (a crash of this rank alone, outside any collective).
    """
    from training import engine

    if kill and kill[0] in ("step", "nan", "raise"):
        original, count = engine.train_one_epoch, {"n": 0}

        def train_one_epoch(model, loader, optimizer, scheduler, tokens, cfg, state, step_fn, *args, **kwargs):
            def step(*step_args):
                count["n"] += 1
                if count["n"] == kill[1] and kill[0] == "step":  # to the data workers too, as schedulers do
                    os.killpg(os.getpgrp(), getattr(signal, kill[2]))
                if count["n"] == kill[1] and kill[0] == "raise":
                    raise RuntimeError(f"this rank crashes on purpose at micro-batch {count['n']}")
                loss, parts = step_fn(*step_args)
                if count["n"] == kill[1] and kill[0] == "nan":
                    loss = loss * float("nan")
                return loss, parts

            return original(model, loader, optimizer, scheduler, tokens, cfg, state, step, *args, **kwargs)

        setattr(engine, "train_one_epoch", train_one_epoch)
    elif kill and kill[0] == "write":
        real_replace, seen = os.replace, {"n": 0}

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == kill[1]:
                seen["n"] += 1
                if seen["n"] == kill[2]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *args, **kwargs)

        setattr(os, "replace", replace)


def drive(entry, argv, kill=None):
    """Run ``entry``.main(argv) like the command line does, stopped as ``install_kill`` says."""
    import importlib

    from training.stage import run_main

    install_kill(kill)
    module = importlib.import_module(entry)
    run_main(lambda: module.main(argv))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 training videos (4 anomalous) and 4 test videos (2 anomalous) of the small preset."""
    from datasets.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, preset="small", seed=0)
    train = first_of_each_class((root / "train.txt").read_text().splitlines(), label_column=3, count=4)
    test = first_of_each_class((root / "test.txt").read_text().splitlines(), label_column=2, count=2)
    (root / "train8.txt").write_text("\n".join(train) + "\n")
    (root / "test4.txt").write_text("\n".join(test) + "\n")
    return ["DATA.ROOT", str(root), "DATA.TRAIN_FILE", str(root / "train8.txt"), "DATA.VAL_FILE", str(root / "test4.txt")]


def first_of_each_class(lines, label_column, count):
    """The first ``count`` normal and ``count`` anomalous lines, in list order."""
    normal = [line for line in lines if int(line.split()[label_column]) == 0][:count]
    anomalous = [line for line in lines if int(line.split()[label_column]) > 0][:count]
    assert len(normal) == len(anomalous) == count, "the small preset has too few videos of a class"
    return [line for line in lines if line in normal + anomalous]


def start(entry, config, output, data, opts=(), kill=None, env=None):
    argv = ["-cfg", config, "--output", str(output), "--opts", *data, *SMALL, *opts]
    code = f"from tests.test_reliability_runs import drive; drive({entry!r}, {argv!r}, {kill!r})"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO), **(env or {}))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if name not in (env or {}):
            env.pop(name, None)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, what, expect=0, timeout=120):
    """Wait for a started run; its console output (asserting its exit code)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} ran for more than {timeout} s")
    assert proc.returncode == expect, f"{what}: exit {proc.returncode}, expected {expect}\n{out[-4000:]}"
    return out


def run(entry, config, output, data, opts=(), kill=None, expect=0, timeout=120):
    return finish(start(entry, config, output, data, opts, kill), f"{entry} {kill}", expect, timeout)


def assert_same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def state_of(output, tag="last"):
    ok, problem = ckpt.verify_checkpoint(output / "checkpoints" / tag)
    assert ok, problem
    return torch.load(output / "checkpoints" / f"{tag}.state.pt", weights_only=True)


def test_promptmil_killed_three_ways_then_resumed_equals_uninterrupted(data, tmp_path):
    """main.py, 3 epochs x 4 micro-batches: SIGKILL while epoch 2's 'last' is half saved, then a
    SIGTERM and a SIGKILL (to the process group) at random micro-batches; the final weights equal
    an uninterrupted run's."""
    draw = random.Random(KILL_SEED)
    opts = ["TRAIN.EPOCHS", "3"]
    reference = start("main", CI, tmp_path / "full", data, opts)  # alongside the interrupted runs
    out = tmp_path / "killed"

    # 1. SIGKILL between the renames of epoch 2's last.safetensors and last.state.pt
    run("main", CI, out, data, opts, kill=("write", "last.state.pt", 2), expect=-signal.SIGKILL)
    folder = out / "checkpoints"
    assert not ckpt.verify_checkpoint(folder / "last")[0]  # half written: new weights, old state/manifest
    assert list(folder.glob(".last.state.pt.*.tmp"))  # the unrenamed temporary file
    assert json.loads((folder / "last.previous.manifest.json").read_text())["epoch"] == 1
    assert not (out / "results.json").exists()

    # 2. SIGTERM at a random micro-batch: saves a mid-epoch checkpoint and exits with 0
    n_term = draw.randint(1, 3)
    log = run("main", CI, out, data, opts, kill=("step", n_term, "SIGTERM"))
    assert "skipping checkpoint 'last'" in log and "removing" in log, log[-3000:]
    state = state_of(out)
    assert 0 < state["extra"]["batch_in_epoch"] < 4, f"SIGTERM at micro-batch {n_term}: {state['extra']}"
    assert not list(folder.glob(".*.tmp")) and not (out / "results.json").exists()

    # 3. SIGKILL at a random micro-batch of what is left
    left = (3 - state["epoch"]) * 4 - state["extra"]["batch_in_epoch"]
    n_kill = draw.randint(1, left)
    run("main", CI, out, data, opts, kill=("step", n_kill, "SIGKILL"), expect=-signal.SIGKILL)

    # 4. the same command again finishes the run
    run("main", CI, out, data, opts)
    finish(reference, "the uninterrupted run")
    assert_same_weights(tmp_path / "full" / "checkpoints" / "last.safetensors", folder / "last.safetensors")
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["resumed_from"] and resumed["steps"] == full["steps"] == 12
    assert [h["auc_all"] for h in resumed["history"]] == [h["auc_all"] for h in full["history"]]
    assert not list(folder.glob("*.previous.*")), "the previous copies are removed after a complete save"


def test_advtrain_killed_mid_step_and_mid_save_then_resumed_equals_uninterrupted(data, tmp_path):
    """main_advtrain.py (PGD + SRD pseudo anomalies, random draws everywhere), 2 epochs: SIGKILL at a
    random micro-batch of epoch 2, then SIGKILL just before a manifest rename; resume equals uninterrupted."""
    draw = random.Random(KILL_SEED + 1)
    opts = ["TRAIN.EPOCHS", "2", "ADV_TRAIN.PSEUDO_LABEL", "False", "ADV_TRAIN.SRD_PROB", "1.0", "ATTACK.STEPS", "1"]
    reference = start("main_advtrain", CI_ADV, tmp_path / "full", data, opts)  # alongside the interrupted runs
    out = tmp_path / "killed"
    n_kill = draw.randint(5, 8)  # in epoch 2
    run("main_advtrain", CI_ADV, out, data, opts, kill=("step", n_kill, "SIGKILL"), expect=-signal.SIGKILL)
    assert state_of(out)["epoch"] == 1
    run("main_advtrain", CI_ADV, out, data, opts, kill=("write", "last.manifest.json", 1), expect=-signal.SIGKILL)
    assert not ckpt.verify_checkpoint(out / "checkpoints" / "last")[0]
    run("main_advtrain", CI_ADV, out, data, opts)
    finish(reference, "the uninterrupted run")
    assert_same_weights(tmp_path / "full" / "checkpoints" / "last.safetensors", out / "checkpoints" / "last.safetensors")
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert [h["auc_all"] for h in resumed["history"]] == [h["auc_all"] for h in full["history"]]


def test_killed_between_the_best_checkpoint_and_its_scores_then_resumed(data, tmp_path):
    """SIGKILL just before scores.npz of the best epoch is renamed into place: the resumed run
    must still end with exactly those scores (the killed run's fully written temporary file)
    and the plots of its best epoch."""
    opts = ["TRAIN.EPOCHS", "1"]
    run("main", CI, tmp_path, data, opts, kill=("write", "scores.npz", 1), expect=-signal.SIGKILL)
    written = list(tmp_path.glob(".scores.npz.*.tmp"))
    assert len(written) == 1 and not (tmp_path / "scores.npz").exists()
    intended = written[0].read_bytes()
    run("main", CI, tmp_path, data, opts)
    assert (tmp_path / "scores.npz").is_file(), "the resumed run has no scores.npz"
    assert (tmp_path / "scores.npz").read_bytes() == intended
    assert (tmp_path / "plots" / "roc.png").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["best"]["epoch"] == 1


def two_ranks(data, output, opts, kills, limit_s):
    """Start main.py on 2 gloo ranks with torchrun's environment; (exit codes, outputs, seconds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "FRAMESHIELD_DIST_TIMEOUT": "60"}
        procs.append(start("main", CI, output, data, opts, kill=kills[rank], env=env))
    started, outputs = time.time(), []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, limit_s - (time.time() - started)))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"the ranks did not stop together within {limit_s} s")
    return [p.returncode for p in procs], outputs, time.time() - started


def test_sigterm_on_one_of_two_ranks_stops_both_with_a_resumable_checkpoint(data, tmp_path):
    """Only rank 1 gets SIGTERM, before its 2nd micro-batch. Both ranks stop after that
    optimizer step, rank 0 saves 'last' (with both ranks' RNG states), both exit 0."""
    opts = ["TRAIN.EPOCHS", "2", "TRAIN.BATCH_SIZE", "1"]  # 4 videos per rank, 4 micro-batches
    codes, outputs, _ = two_ranks(data, tmp_path, opts, [None, ("step", 2, "SIGTERM")], limit_s=150)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    state = state_of(tmp_path)
    assert (state["epoch"], state["step"], state["extra"]["batch_in_epoch"]) == (0, 2, 2)
    assert state["extra"]["world_size"] == 2 and len(state["extra"]["rng"]) == 2
    assert "received SIGTERM" in (tmp_path / "log_rank1.txt").read_text()
    assert "stopped by a signal" in (tmp_path / "log_rank0.txt").read_text()
    assert not (tmp_path / "results.json").exists()


def test_a_rank_that_crashes_makes_both_exit_non_zero_promptly(data, tmp_path):
    """Rank 1 raises in its 2nd micro-batch while rank 0 goes on to the next collective:
    rank 0 must fail too, well before the 60 s collective timeout, not hang."""
    opts = ["TRAIN.EPOCHS", "1", "TRAIN.BATCH_SIZE", "1"]
    codes, outputs, seconds = two_ranks(data, tmp_path, opts, [None, ("raise", 2)], limit_s=150)
    assert codes[0] != 0 and codes[1] != 0, "\n\n".join(o[-3000:] for o in outputs)
    assert "crashes on purpose" in outputs[1]
    assert seconds < 60, f"rank 0 waited {seconds:.0f} s for the crashed rank"


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    """A NaN loss in epoch 2 (in this process: no kill involved): exit code 2, a message naming
    epoch, micro-batch and optimizer step, and the checkpoint of epoch 1 left intact."""
    import main as promptmil_main
    from training.stage import run_main

    install_kill(("nan", 6), monkeypatch.setattr)
    argv = ["-cfg", CI, "--output", str(tmp_path), "--opts", *data, *SMALL, "TRAIN.EPOCHS", "2"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: promptmil_main.main(argv))
    assert exit_info.value.code == 2
    log = (tmp_path / "log_rank0.txt").read_text()
    assert "TrainingError: non-finite loss (nan) at epoch 2, micro-batch 2/4, optimizer step 6" in log, log[-3000:]
    assert "lower TRAIN.LR" in log and "Traceback" not in log
    state = state_of(tmp_path)  # the checkpoint of epoch 1, intact
    assert (state["epoch"], state["step"]) == (1, 4)
    assert ckpt.find_auto_resume(tmp_path) == str(tmp_path / "checkpoints" / "last.safetensors")
    assert not (tmp_path / "results.json").exists()
