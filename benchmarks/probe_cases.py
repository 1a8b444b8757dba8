"""Cases of the reliability probe, issue 15 classes 1-4: paths outside the run, other runs'
results, I/O failures, malformed files read back. Classes 5-8 are in probe_cases_input.py.

Each case is ``Case(name, class, setup)``; ``setup(box)`` builds the bad input in the sandbox
and returns the Plan (commands, check of an exit 0, protected files). Resume cases copy the
fixture's run stopped inside epoch 2 (``mid``) to ``out`` and resume it, so a checkpoint is
read, kept as ``last.previous`` and written again.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from benchmarks import probe_common as c
from benchmarks.probe_reliability import Box, Case, Plan, start

TRAIN_T = 150.0  # a run that is accepted trains (slowly, two cases side by side on shared cores)


# ----------------------------------------------------------------------------- class 1: outside the folder
def _resume_with(edit, names=("manifest",), check=None, **kwargs):
    """Copy the stopped run to ``out``, ``edit(box, out/checkpoints)``, resume it."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box, "mid", "out")
        edit(box, box / "out" / "checkpoints")
        return c.plan(c.resume(box), names=names, check=check or c.warned("manifest"), timeout=TRAIN_T, **kwargs)
    return setup


def _escape_entry(name_of):
    def edit(box: Box, folder: Path) -> None:
        victim = (box / "victim.txt").read_bytes()
        import hashlib
        entry = {"size": len(victim), "sha256": hashlib.sha256(victim).hexdigest()}
        c.edit_manifest(folder, "last", lambda m: m["files"].update({name_of(box): entry}))
    return edit


def _previous_escape(box: Box, folder: Path) -> None:
    manifest = json.loads((folder / "last.manifest.json").read_text())
    manifest["tag"] = "last.previous"
    manifest["files"] = {f"last.previous/../../../victim.txt{s}": e
                         for s, e in zip(("", ".a", ".b"), manifest["files"].values())}
    (folder / "last.previous.manifest.json").write_text(json.dumps(manifest))


def _symlink_file(box: Box, folder: Path) -> None:
    (folder / "last.yaml").unlink()
    (folder / "last.yaml").symlink_to(box / "victim.txt")
    c.rehash(folder, "last")


def _symlink_dir(link: str, check=None, runner="resume"):
    """``out/<link>`` is a symbolic link to ``elsewhere/`` (beside the run): writing there is touching outside."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        if runner == "resume":
            c.copy_run(box, "mid", "out")
        else:
            c.copy_run(box)
            (box / "out").mkdir()
        target = box / "out" / link
        if target.exists():
            os.rename(target, box / "elsewhere")
        else:
            (box / "elsewhere").mkdir()
            (box / "elsewhere" / "keep.txt").write_text("not the run's\n")
        target.symlink_to(box / "elsewhere", target_is_directory=True)
        commands = {"resume": lambda: c.resume(box, "TRAIN.TENSORBOARD", "True"),
                    "infer": lambda: c.infer(box, c.video(box)),
                    "only_test": lambda: c.only_test(box)}[runner]()
        return c.plan(commands, names=(link, "link"), check=check, timeout=TRAIN_T)
    return setup


def _symlink_victim(name: str, runner: str):
    """``out/<name>`` is a symbolic link to ``victim.txt``; the run writes ``name``."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        if runner == "resume":
            c.copy_run(box, "mid", "out")
            (box / "out" / name).unlink(missing_ok=True)
        else:
            (box / "out").mkdir()
        (box / "out" / name).symlink_to(box / "victim.txt")
        command = {"resume": lambda: c.resume(box), "infer": lambda: c.infer(box, c.video(box)),
                   "only_test": lambda: c.only_test(box)}[runner]()
        return c.plan(command, names=(name, "link"), check=lambda b, o: None, timeout=TRAIN_T)
    return setup


def _stale_tmp_link(box: Box, folder: Path) -> None:
    (folder / ".last.state.pt.abc12300.tmp").symlink_to(box / "victim.txt")


def _tmp_link_removed(box: Box, output: str) -> str | None:
    left = list((box / "out").rglob("*.tmp"))
    return f"stale temporary file(s) left: {[p.name for p in left]}" if left else None


CLASS1 = [
    Case("manifest_entry_dotdot_resume", 1, _resume_with(_escape_entry(lambda b: "last/../../../victim.txt"))),
    Case("manifest_entry_absolute_resume", 1, _resume_with(_escape_entry(lambda b: str(b / "victim.txt")))),
    Case("manifest_previous_dotdot_resume", 1, _resume_with(_previous_escape)),
    Case("checkpoint_file_symlink_resume", 1, _resume_with(_symlink_file, names=("link", "last.yaml"),
                                                           check=c.warned("link"))),
    Case("stale_tmp_symlink_resume", 1, _resume_with(_stale_tmp_link, names=("manifest", "symbolic link"),
                                                     check=_tmp_link_removed)),
    Case("checkpoints_dir_symlink_resume", 1, _symlink_dir("checkpoints")),
    Case("tb_dir_symlink_resume", 1, _symlink_dir("tb")),
    Case("plots_dir_symlink_only_test", 1, _symlink_dir("plots", runner="only_test")),
    Case("infer_video_dir_symlink", 1, _symlink_dir("04_0000", runner="infer")),
    Case("log_symlink_victim_infer", 1, _symlink_victim("log_rank0.txt", "infer")),
    Case("log_symlink_victim_resume", 1, _symlink_victim("log_rank0.txt", "resume")),
    Case("metrics_symlink_victim_resume", 1, _symlink_victim("metrics.csv", "resume")),
]


# ----------------------------------------------------------------------------- class 2: another run's results
def _into_run(command_of, protect=c.RUN_FILES):
    """An evaluation whose --output is the fixture's finished training folder ``run``."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        return c.plan(command_of(box), writable=("run",), protect=tuple(f"run/{p}" for p in protect),
                      names=("run", "output"), check=lambda b, o: None, timeout=TRAIN_T)
    return setup


def _two_at_once(first, second, stagger=2.0):
    """Two runs started together on one --output: one must be refused (a lock)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)

        def check(b: Box, output: str) -> str:
            return "both runs exited 0 writing into one --output (no lock)"
        return Plan([first(box), second(box)], check=check, names=("lock", "out", "running", "another"),
                    timeout=TRAIN_T, stagger=stagger)
    return setup


def _killed_then_rerun(box: Box) -> Plan:
    """A training SIGKILLed after its first checkpoint, stale temporary files beside it; rerun."""
    c.copy_data(box)
    command = c.train(box, "out", "TRAIN.EPOCHS", "2", "TRAIN.AUTO_RESUME", "True")
    proc = start(command, box)
    deadline = time.monotonic() + TRAIN_T
    while proc.poll() is None and time.monotonic() < deadline \
            and not (box / "out/checkpoints/last.manifest.json").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    for stale in ("out/.results.json.k1ll3d00.tmp", "out/.config.yaml.k1ll3d00.tmp",
                  "out/checkpoints/.last.state.pt.k1ll3d00.tmp"):
        (box / stale).write_bytes(b"half written")
    return c.plan(command, check=_tmp_link_removed, timeout=TRAIN_T)


def _killed_infer_rerun(box: Box) -> Plan:
    c.copy_data(box)
    c.copy_run(box)
    (box / "out/04_0000").mkdir(parents=True)
    (box / "out/.summary.json.k1ll3d00.tmp").write_bytes(b"half")
    (box / "out/04_0000/.scores.json.k1ll3d00.tmp").write_bytes(b"half")
    return c.plan(c.infer(box, c.video(box)), check=_tmp_link_removed)


CLASS2 = [
    Case("infer_into_training_folder", 2, _into_run(lambda b: c.infer(b, c.video(b), output="run"))),
    Case("only_test_into_training_folder", 2, _into_run(lambda b: c.only_test(b, "run"))),
    Case("attack_into_training_folder", 2, _into_run(lambda b: c.attack(b, "run"))),
    Case("genlabels_into_training_folder", 2, _into_run(lambda b: c.genlabels(b, "run", "run"))),
    Case("infer_into_checkpoints_folder", 2, _into_run(lambda b: c.infer(b, c.video(b), output="run/checkpoints"))),
    Case("two_trainings_one_output", 2, _two_at_once(lambda b: c.train(b), lambda b: c.train(b))),
    Case("two_infers_one_output", 2, _two_at_once(lambda b: c.infer(b, c.video(b)),
                                                  lambda b: c.infer(b, c.video(b, "03_0001")), stagger=0.5)),
    Case("training_and_only_test_one_output", 2, _two_at_once(lambda b: c.train(b), lambda b: c.only_test(b))),
    Case("killed_training_rerun", 2, _killed_then_rerun),
    Case("killed_infer_rerun", 2, _killed_infer_rerun),
]


# ----------------------------------------------------------------------------- class 3: I/O failures
def _output(kind: str, runner: str):
    """--output that cannot be written: a file, below a file, a 300-character name, read-only, in /proc."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        out = "out"
        if kind == "file":
            (box / "out").write_text("a file, not a folder\n")
        elif kind == "under_file":
            (box / "out").write_text("a file, not a folder\n")
            out = "out/sub"
        elif kind == "long_name":
            out = "x" * 300
        elif kind == "proc":
            out = "/proc/frameshield_probe_out"
        elif kind == "readonly":
            (box / "out").mkdir()
            os.chmod(box / "out", 0o555)
            try:
                (box / "out" / "probe").write_text("x")
                (box / "out" / "probe").unlink()
                os.chmod(box / "out", 0o755)
                return Plan([], skip="chmod does not stop this user (root) from writing: cannot probe")
            except PermissionError:
                pass
        commands = {"main": lambda: c.train(box, out), "attack": lambda: c.attack(box, out),
                    "advtrain": lambda: c.advtrain(box, out),
                    "infer": lambda: c.infer(box, c.video(box), output=out),
                    "demo": lambda: [c.sys.executable, str(box.repo / "demo.py"), "--preset", "ci", "--output", out,
                                     "--data", "data", "--device", "cpu", "--jobs", "1", "--quiet", "--no-plots"]}
        names = ("out", "output", "x" * 20, "proc")
        return c.plan(commands[runner](), names=names, writable=("out",), timeout=TRAIN_T)
    return setup


def _disk_full(runner: str):
    """--output on a small tmpfs: the run's writes fail with ENOSPC (a resumed training: while
    saving its next checkpoint, after which a valid checkpoint must be left)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        out = box / "out"
        out.mkdir()
        size = sum(f.stat().st_size for f in (box.fix / "mid").rglob("*") if f.is_file()) if runner == "resume" else 0
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size // 1024 + 2048 if size else 8}k", "tmpfs", str(out)]
        if subprocess.run(mount, capture_output=True).returncode:
            return Plan([], skip="cannot mount a small tmpfs here (needs root): disk full not probed")
        after = None
        if runner == "resume":
            shutil.copytree(box.fix / "mid", out, dirs_exist_ok=True)
            after = c.valid_checkpoint_left
        command = {"resume": lambda: c.resume(box), "infer": lambda: c.infer(box, c.video(box)),
                   "attack": lambda: c.attack(box), "only_test": lambda: c.only_test(box)}[runner]()
        return c.plan(command, names=("space", "disk", "ENOSPC"), timeout=TRAIN_T, after=after,
                      cleanup=lambda: subprocess.run(["umount", "-l", str(out)], capture_output=True))
    return setup


def _blocked_path(name: str, runner: str, as_dir: bool):
    """A path the run writes is taken by a folder (or a file where it needs a folder)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        (box / "out").mkdir()
        if as_dir:
            (box / "out" / name).mkdir()
        else:
            (box / "out" / name).write_text("in the way\n")
        command = c.infer(box, c.video(box)) if runner == "infer" else c.train(box)
        return c.plan(command, names=(name,), timeout=TRAIN_T)
    return setup


def _pretrained_dir(runner: str):
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        weights = "run/checkpoints"
        command = c.infer(box, c.video(box), weights=weights) if runner == "infer" else c.attack(box, weights=weights)
        return c.plan(command, names=("checkpoints", "pretrained"))
    return setup


CLASS3 = [Case(f"output_is_file_{r}", 3, _output("file", r)) for r in ("main", "advtrain", "attack", "infer", "demo")]
CLASS3 += [
    Case("output_under_file_main", 3, _output("under_file", "main")),
    Case("output_under_file_infer", 3, _output("under_file", "infer")),
    Case("output_name_too_long_main", 3, _output("long_name", "main")),
    Case("output_name_too_long_infer", 3, _output("long_name", "infer")),
    Case("output_in_proc_infer", 3, _output("proc", "infer")),
    Case("output_readonly_main", 3, _output("readonly", "main")),
    Case("output_readonly_infer", 3, _output("readonly", "infer")),
    Case("disk_full_training_save", 3, _disk_full("resume")),
    Case("disk_full_infer", 3, _disk_full("infer")),
    Case("disk_full_attack", 3, _disk_full("attack")),
    Case("disk_full_only_test", 3, _disk_full("only_test")),
    Case("log_file_is_folder_infer", 3, _blocked_path("log_rank0.txt", "infer", True)),
    Case("checkpoints_is_file_main", 3, _blocked_path("checkpoints", "main", False)),
    Case("video_output_is_file_infer", 3, _blocked_path("04_0000", "infer", False)),
    Case("pretrained_is_folder_infer", 3, _pretrained_dir("infer")),
    Case("pretrained_is_folder_attack", 3, _pretrained_dir("attack")),
]


# More members of the classes, run with --extended (the default run stays near 20 minutes).
EXTENDED = {
    "metrics_symlink_victim_resume", "tb_dir_symlink_resume", "training_and_only_test_one_output",
    "infer_into_checkpoints_folder", "output_under_file_infer", "output_name_too_long_infer",
    "pretrained_is_folder_attack", "manifest_step_negative_resume", "manifest_entry_size_string_resume",
    "manifest_json_array_resume", "state_epoch_string_resume", "state_batch_in_epoch_negative_resume",
    "infer_threshold_negative", "infer_threshold_extra_list", "weights_nan_advtrain", "weights_nan_resume",
    "best_yaml_python_tag_infer", "pseudo_label_2_advtrain", "pseudo_label_nan_advtrain",
    "pseudo_frame_index_negative_advtrain", "pseudo_entry_not_object_advtrain", "tmpl_index_main",
    "tmpl_attribute_infer", "config_lr_nan", "config_epochs_negative", "config_save_freq_zero",
    "config_frame_interval_zero", "config_attack_eps_nan", "config_adv_eps_negative", "demo_seeds_zero",
    "demo_first_seed_negative", "infer_fps_nan", "infer_render_seconds_negative", "test_interval_negative",
    "test_zero_frames", "test_list_utf8_bom", "test_label_2_of_2_classes", "torchrun_1_attack_missing_list",
    "manifest_previous_dotdot_resume", "log_symlink_victim_resume", "output_is_file_advtrain",
    "manifest_step_string_resume", "state_not_a_dict_resume", "weights_bool_infer", "weights_inf_infer",
    "pseudo_frame_index_huge_int_advtrain", "pseudo_top_level_list_advtrain", "config_accumulation_zero",
    "config_seed_negative", "infer_fps_zero", "test_interval_reversed", "train_duplicate_other_label",
    "data_root_folder_symlink_outside",
    "fuzz_manifest_seed2", "fuzz_state_seed2", "fuzz_pseudo_seed2", "fuzz_list_seed2", "fuzz_config_seed2",
}


def all_cases(extended: bool = False) -> list[Case]:
    """The cases in class order (names are unique); ``extended`` adds the EXTENDED members."""
    from benchmarks.probe_cases_files import CLASS4
    from benchmarks.probe_cases_input import CLASS5, CLASS6, CLASS7, CLASS8

    cases = CLASS1 + CLASS2 + CLASS3 + CLASS4 + CLASS5 + CLASS6 + CLASS7 + CLASS8
    names = {case.name for case in cases}
    assert len(names) == len(cases) and EXTENDED <= names, "case names must be unique; EXTENDED must name cases"
    return cases if extended else [case for case in cases if case.name not in EXTENDED]
