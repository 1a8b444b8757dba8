"""Issue 15, class 2 (and the output-folder half of class 3): no run destroys another's results.

An evaluation into a folder holding another kind of run writes into a subfolder (main.py
--only_test -> OUTPUT/test, main_attack.py -> OUTPUT/attack, infer.py -> OUTPUT/infer) or is
refused (stage 2a over a training, a training over evaluation results); two runs on one
--output are refused by a lock that a SIGKILLed run does not leave stuck; the stale
temporary files of killed writes are removed on the next run; an --output that is a file or
cannot be written is a clear OutputError for the stages, infer.py and the demo.

The stage tests stop at ``setup_stage`` (the output rules are decided there, before any data
is read), so none trains or scores.
"""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training import stage as stages
from utils import outdir
from utils.config import build_arg_parser, get_config, save_config
from utils.errors import CheckpointError, ConfigError, OutputError

REPO = Path(__file__).resolve().parents[1]
CI = "configs/synthetic/synthetic_ci.yaml"
CI_ADV = "configs/synthetic/synthetic_ci_advtrain.yaml"
CI_ATTACK = "configs/synthetic/synthetic_ci_attack.yaml"
RUN_FILES = ("config.yaml", "results.json", "scores.npz", "metrics.csv", "plots/roc.png")


def stage_args(entry, config, output, *flags):
    if entry == "attack":
        import main_attack

        return main_attack.parse_args(["-cfg", config, "--output", str(output), *flags])
    return build_arg_parser("test").parse_args(["-cfg", config, "--output", str(output), *flags])


def fake_run(folder, kind, args):
    """A finished run of ``kind`` (training | evaluation | pseudo_labels) whose config.yaml is
    the one ``args`` gives (so the folder counts as the same run today); returns file hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {"training": {"stage": "promptmil", "history": []}, "evaluation": {"stage": "promptmil", "test": {}},
               "pseudo_labels": {"stage": "advtrain", "pseudo_labels": "pseudo_labels.json"}}[kind]
    (folder / "results.json").write_text(json.dumps(results))
    for name in ("scores.npz", "metrics.csv", "plots/roc.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{kind} sentinel")
    if kind == "training":
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.safetensors").write_text("weights")
    if kind == "pseudo_labels":
        (folder / "pseudo_labels.json").write_text("{}")
    save_config(get_config(args), folder / "config.yaml")
    return hashes(folder)


def hashes(folder):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in RUN_FILES if (folder / n).is_file()}


@pytest.mark.parametrize("entry, config, flags, subfolder", [
    ("promptmil", CI, ("--only_test",), "test"),   # main.py --only_test
    ("attack", CI_ATTACK, (), "attack"),           # main_attack.py
])
def test_evaluation_into_a_training_folder_writes_into_a_subfolder(tmp_path, entry, config, flags, subfolder):
    args = stage_args(entry, config, tmp_path, *flags)
    before = fake_run(tmp_path, "training", stage_args("promptmil", config, tmp_path))
    stage = stages.setup_stage(entry, args)
    assert stage.output == tmp_path / subfolder and stage.cfg.OUTPUT == str(tmp_path / subfolder)
    assert (tmp_path / subfolder / "config.yaml").is_file()
    assert hashes(tmp_path) == before  # the training's config.yaml, results, scores, curves, plots
    log = (tmp_path / subfolder / "log_rank0.txt").read_text()
    assert f"writes into {tmp_path / subfolder}" in log


def test_evaluation_into_an_evaluation_of_its_own_kind_stays_in_place(tmp_path):
    args = stage_args("promptmil", CI, tmp_path, "--only_test")
    fake_run(tmp_path, "evaluation", args)
    assert stages.setup_stage("promptmil", args).output == tmp_path  # the same test, run again


def test_pseudo_labels_over_a_training_are_refused_unless_overwrite(tmp_path):
    args = stage_args("advtrain", CI_ADV, tmp_path, "--only_test")
    before = fake_run(tmp_path, "training", stage_args("advtrain", CI_ADV, tmp_path))
    with pytest.raises(ConfigError, match=r"pseudo_labels\.json.*--overwrite"):
        stages.setup_stage("advtrain", args)
    assert hashes(tmp_path) == before
    args = stage_args("advtrain", CI_ADV, tmp_path, "--only_test", "--overwrite")
    assert stages.setup_stage("advtrain", args).output == tmp_path  # regenerate on purpose


def test_genlabels_then_advtrain_still_share_their_folder(tmp_path):
    """runners/genlabels.sh then runners/advtrain.sh: stage 2b trains where 2a wrote its labels."""
    fake_run(tmp_path, "pseudo_labels", stage_args("advtrain", CI_ADV, tmp_path, "--only_test"))
    assert stages.setup_stage("advtrain", stage_args("advtrain", CI_ADV, tmp_path)).output == tmp_path


def test_training_over_evaluation_results_is_refused_unless_overwrite(tmp_path):
    before = fake_run(tmp_path, "evaluation", stage_args("promptmil", CI, tmp_path, "--only_test"))
    with pytest.raises(ConfigError, match=r"evaluation results.*--overwrite"):
        stages.setup_stage("promptmil", stage_args("promptmil", CI, tmp_path))
    assert hashes(tmp_path) == before
    assert stages.setup_stage("promptmil", stage_args("promptmil", CI, tmp_path, "--overwrite")).output == tmp_path


def infer_argv(output, weights):
    return [str(REPO / "README.md"), "--pretrained", str(weights), "-cfg", CI, "--output", str(output),
            "--device", "cpu"]


def test_infer_into_a_training_folder_writes_into_infer(tmp_path):
    import infer

    before = fake_run(tmp_path, "training", stage_args("promptmil", CI, tmp_path))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):  # fails at the weights, after the output is set up
        infer.main(infer_argv(tmp_path, junk))
    assert hashes(tmp_path) == before
    assert (tmp_path / "infer" / "config.yaml").is_file()


# ----------------------------------------------------------------------------- the lock
def hold_lock(folder):
    """A separate process that holds ``folder``'s lock until it is killed."""
    code = ("import sys, time; from utils.outdir import lock_output; "
            f"lock_output({str(folder)!r}, 'test holder'); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        args = stage_args("promptmil", CI, tmp_path, "--only_test")
        with pytest.raises(OutputError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} .*test holder"):
            stages.setup_stage("promptmil", args)
        assert not (tmp_path / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert stages.setup_stage("promptmil", args).output == tmp_path  # nothing stuck


def test_workers_that_outlive_a_killed_run_do_not_hold_its_lock(tmp_path):
    """A SIGKILLed main process whose forked data-loader workers are still alive for a moment."""
    code = ("import os, time; from utils.outdir import lock_output; "
            f"lock_output({str(tmp_path)!r}, 'run with a worker'); pid = os.fork()\n"
            "if pid == 0: time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.kill(worker, 0)  # the worker still lives
        assert outdir.lock_output(tmp_path, "the next run") is None
    finally:
        os.kill(worker, signal.SIGKILL)
        outdir.release_output(tmp_path)


def test_the_lock_is_reentrant_in_one_process_and_released_on_request(tmp_path):
    assert outdir.lock_output(tmp_path, "first") is None
    assert outdir.lock_output(tmp_path, "second stage, same process") is None
    outdir.release_output(tmp_path)
    holder = hold_lock(tmp_path)  # another process can take it now
    holder.send_signal(signal.SIGKILL)
    holder.wait()


def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / outdir.LOCK_NAME).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        outdir.lock_output(out, "x")
    assert victim.read_text() == "keep me"


# ----------------------------------------------------------------------------- stale temporaries
def test_stale_temp_files_are_removed_everywhere_but_in_live_runs(tmp_path):
    out = tmp_path / "out"
    stale = [out / ".results.json.abcd1234.tmp", out / "plots" / ".roc.png.zz99yy88.tmp",
             out / "checkpoints" / ".last.state.pt.q_1w2e3r.tmp", out / "seed0" / "baseline" / ".x.yaml.aaaaaaaa.tmp"]
    kept = [out / "notes.tmp", out / ".hidden.tmp", out / "plots" / "roc.png"]
    live = out / "test" / ".scores.npz.bbbbbbbb.tmp"  # an evaluation running in OUTPUT/test now
    for file in stale + kept + [live]:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("x")
    (out / "seed0" / "baseline" / outdir.LOCK_NAME).write_text("pid 1: a run that was killed\n")
    holder = hold_lock(out / "test")
    try:
        notes = outdir.claim_output(out, "test")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept + [live])  # (a link out of the folder is refused: see below)
    assert sorted(notes) == sorted(f"removing {f}, left over from an interrupted write" for f in stale)


# ----------------------------------------------------------------------------- unusable --output
def run_entry(entry, output, tmp_path):
    """Start ``entry`` on ``output`` in this process; the error it raises (None when none)."""
    try:
        if entry == "infer":
            import infer

            junk = tmp_path / "junk.safetensors"
            junk.write_bytes(b"x")
            infer.main(infer_argv(output, junk))
        elif entry == "demo":
            from apps.demo import run_demo

            run_demo(preset="ci", output=output, device="cpu", data_dir=tmp_path / "no_data")
        else:
            stages.setup_stage(entry, stage_args(entry, CI_ATTACK if entry == "attack" else CI, output))
    except Exception as err:  # noqa: BLE001 - the test inspects which error it was
        return err
    return None


ENTRIES = ("promptmil", "attack", "infer", "demo")


@pytest.mark.parametrize("entry", ENTRIES)
def test_output_that_is_a_file_is_a_clear_error(tmp_path, entry):
    target = tmp_path / "results.txt"
    target.write_text("my notes")
    err = run_entry(entry, target, tmp_path)
    assert isinstance(err, OutputError) and f"{target} is a file" in str(err) and "--output" in str(err), err
    err = run_entry(entry, target / "sub", tmp_path)
    assert isinstance(err, OutputError) and "not a folder" in str(err), err
    assert target.read_text() == "my notes"


@pytest.mark.parametrize("entry", ENTRIES)
def test_read_only_output_is_a_clear_error(tmp_path, entry, monkeypatch):
    """What a read-only folder (chmod 555, or a read-only mount) does to the first file a run
    creates there; simulated, because root (as in CI containers) may write anyway."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    err = run_entry(entry, folder, tmp_path)
    assert isinstance(err, OutputError) and "Permission denied" in str(err) and "choose a folder" in str(err), err
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into chmod 555 folders")
def test_really_read_only_output(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        err = run_entry("promptmil", folder, tmp_path)
    finally:
        folder.chmod(0o755)
    assert isinstance(err, OutputError) and "Permission denied" in str(err), err


def test_demo_refuses_a_stage_folder(tmp_path):
    from apps.demo import run_demo

    before = fake_run(tmp_path, "training", stage_args("promptmil", CI, tmp_path))
    with pytest.raises(ConfigError, match="choose another --output for the demo"):
        run_demo(preset="ci", output=tmp_path, device="cpu", data_dir=tmp_path / "no_data")
    assert hashes(tmp_path) == before


def test_demo_on_a_file_exits_2_with_one_line(tmp_path, capsys):
    import demo

    target = tmp_path / "file"
    target.write_text("x")
    assert demo.main(["--output", str(target), "--preset", "ci", "--device", "cpu"]) == 2
    assert "OutputError" in capsys.readouterr().err


@pytest.mark.parametrize("entry", ("infer", "demo"))
def test_infer_and_demo_refuse_a_folder_in_use(tmp_path, entry):
    folder = tmp_path / "out"
    holder = hold_lock(folder)
    try:
        err = run_entry(entry, folder, tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert isinstance(err, OutputError) and "in use by another run" in str(err), err
    assert sorted(p.name for p in folder.iterdir()) == [outdir.LOCK_NAME]  # nothing written


# ---- class 1: links inside the output folder that lead outside it -------------------------------
@pytest.mark.parametrize("name,is_dir", [("checkpoints", True), ("plots", True), ("tb", True),
                                         ("log_rank0.txt", False), ("clip_0001", True)])
def test_a_link_out_of_the_output_folder_is_refused_and_nothing_outside_changes(tmp_path, name, is_dir):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    if is_dir:
        elsewhere.mkdir()
        (elsewhere / "keep.txt").write_text("theirs")
        (elsewhere / ".data.json.cccccccc.tmp").write_text("not ours to clean")
    else:
        elsewhere.write_text("victim")
    (out / name).symlink_to(elsewhere)
    with pytest.raises(OutputError, match=rf"{name} is a symbolic link to .*elsewhere.*outside the output folder"):
        outdir.claim_output(out, "test")
    if is_dir:
        assert sorted(p.name for p in elsewhere.iterdir()) == [".data.json.cccccccc.tmp", "keep.txt"]
    else:
        assert elsewhere.read_text() == "victim"
    outdir.claim_output(tmp_path / "other", "test")  # the refused folder's lock was given up ...
    (out / name).unlink()
    outdir.claim_output(out, "test")  # ... and the same folder without the link is claimed
    outdir.release_output(out)
    outdir.release_output(tmp_path / "other")


def test_links_that_stay_inside_and_an_output_that_is_a_link_are_fine(tmp_path):
    real = tmp_path / "real"
    (real / "checkpoints_disk").mkdir(parents=True)
    (real / "checkpoints").symlink_to(real / "checkpoints_disk")
    (tmp_path / "out").symlink_to(real)
    assert outdir.links_out_of(tmp_path / "out") == []
    outdir.claim_output(tmp_path / "out", "test")
    outdir.release_output(tmp_path / "out")


def test_a_training_into_a_folder_with_a_link_out_exits_2(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "checkpoints").symlink_to(elsewhere)
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "-cfg", str(REPO / "configs/synthetic/synthetic_ci.yaml"),
                           "--output", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "symbolic link" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
    assert list(elsewhere.iterdir()) == []
