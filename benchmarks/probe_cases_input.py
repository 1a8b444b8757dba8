"""Cases of the reliability probe, issue 15 classes 5-8: config values, frames and lists,
errors under torchrun / the runners, and seeded random malformed input per reader (the
probe's counterpart of the hypothesis fuzz tests).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys

from benchmarks import probe_common as c
from benchmarks.probe_cases import TRAIN_T
from benchmarks.probe_reliability import Box, Case, Plan


# ----------------------------------------------------------------------------- class 5: config values
def _config(runner: str, *opts: str, names=(), check=None, timeout=TRAIN_T):
    """A stage (or infer.py) given one bad config value through --opts."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        command = {"main": lambda: c.train(box, "out", *opts), "attack": lambda: c.attack(box, "out", *opts),
                   "advtrain": lambda: c.advtrain(box, "out", *opts),
                   "infer": lambda: c.infer(box, c.video(box), args=("--opts", *opts))}[runner]()
        return c.plan(command, names=names or (opts[0],), check=check, timeout=timeout)
    return setup


def _flag(script: str, *args: str, names=(), timeout=60.0):
    """demo.py / infer.py with a bad command-line value (the demo's data: a copy of the small set)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        if script == "demo":
            command = [sys.executable, str(box.repo / "demo.py"), "--preset", "ci", "--output", "out", "--data", "data",
                       "--device", "cpu", "--quiet", "--no-plots", *args]
        else:
            command = c.infer(box, c.video(box), args=args)
        return c.plan(command, names=names or (args[0].lstrip("-"),), timeout=timeout)
    return setup


TEMPLATES = {"s_spec": "img_{:s}.jpg", "two_fields": "img_{}{}.jpg", "attribute": "img_{0.real}.jpg",
             "index": "img_{0[0]}.jpg", "no_field": "img.jpg"}
CLASS5 = [Case(f"tmpl_{k}_main", 5, _config("main", "DATA.FILENAME_TMPL", v, names=("FILENAME_TMPL",)))
          for k, v in TEMPLATES.items()]
CLASS5 += [Case(f"tmpl_{k}_infer", 5, _config("infer", "DATA.FILENAME_TMPL", v, names=("FILENAME_TMPL",)))
           for k, v in (("s_spec", "img_{:s}.jpg"), ("attribute", "img_{0.real}.jpg"))]
CLASS5 += [Case(f"config_{name}", 5, _config(runner, key, value, check=check)) for name, runner, key, value, check in (
    ("workers_negative", "main", "DATA.NUM_WORKERS", "-1", None),
    ("prefetch_zero", "main", "DATA.PREFETCH_FACTOR", "0", None),
    ("lr_negative", "main", "TRAIN.LR", "-0.001", None),
    ("lr_nan", "main", "TRAIN.LR", "nan", None),
    ("weight_decay_negative", "main", "TRAIN.WEIGHT_DECAY", "-0.1", None),
    ("epochs_zero", "main", "TRAIN.EPOCHS", "0", c.warned("EPOCHS")),
    ("epochs_negative", "main", "TRAIN.EPOCHS", "-1", None),
    ("accumulation_zero", "main", "TRAIN.ACCUMULATION_STEPS", "0", None),
    ("save_freq_zero", "main", "SAVE_FREQ", "0", None),
    ("print_freq_zero", "main", "PRINT_FREQ", "0", None),
    ("seed_negative", "main", "SEED", "-1", None),
    ("frame_interval_zero", "main", "DATA.FRAME_INTERVAL", "0", None),
    ("attack_steps_negative", "attack", "ATTACK.STEPS", "-1", None),
    ("attack_eps_nan", "attack", "ATTACK.EPS", "nan", None),
    ("adv_eps_negative", "advtrain", "ADV_TRAIN.EPS", "-4.0", None),
    ("srd_prob_above_1", "advtrain", "ADV_TRAIN.SRD_PROB", "2.0", None),
)]
CLASS5 += [
    Case("demo_jobs_negative", 5, _flag("demo", "--jobs", "-1")),
    Case("demo_jobs_zero", 5, _flag("demo", "--jobs", "0", timeout=240.0)),
    Case("demo_seeds_zero", 5, _flag("demo", "--seeds", "0", timeout=120.0)),
    Case("demo_first_seed_negative", 5, _flag("demo", "--first-seed", "-1", "--jobs", "1", timeout=120.0)),
    Case("infer_chunk_frames_zero", 5, _flag("infer", "--chunk-frames", "0")),
    Case("infer_fps_zero", 5, _flag("infer", "--fps", "0")),
    Case("infer_fps_nan", 5, _flag("infer", "--fps", "nan")),
    Case("infer_threshold_nan_flag", 5, _flag("infer", "--threshold", "nan")),
    Case("infer_render_seconds_negative", 5, _flag("infer", "--render", "--render-seconds", "-5",
                                                   names=("render-seconds",))),
]


# ----------------------------------------------------------------------------- class 6: frames and lists
def _frame_folder(change, expected: int | None, words=()):
    """infer.py on a copy of a 45-frame test video changed by ``change(folder)``."""
    def setup(box: Box) -> Plan:
        folder = c.copy_data(box) / "frames/test/04_0000"
        c.copy_run(box)
        change(folder)

        def check(b: Box, output: str) -> str | None:
            if words and c.warned(*words)(b, output) is None:
                return None
            return c.infer_scores_ok(expected)(b, output) or f"exit 0 and no warning naming {list(words)}"
        return c.plan(c.infer(box, c.video(box)), names=("img_", "04_0000", "frame"), check=check)
    return setup


def _gap(folder):
    (folder / "img_00000020.jpg").unlink()


def _mixed(folder):
    for i in range(20, 45):
        os.rename(folder / f"img_{i:08}.jpg", folder / f"img_{i:08}.png")


def _corrupt(folder):
    (folder / "img_00000010.jpg").write_bytes(b"not a jpeg at all")


def _empty(folder):
    shutil.rmtree(folder)
    folder.mkdir()


def _list(edit, runner="only_test", words=(), names=("test.txt", "04_0000"), timeout=TRAIN_T):
    """A stage on a list file edited by ``edit(lines)`` (test.txt for only_test, train.txt for main)."""
    def setup(box: Box) -> Plan:
        data = c.copy_data(box)
        c.copy_run(box)
        name = "train.txt" if runner == "main" else "test.txt"
        lines = (data / name).read_text().splitlines()
        new = edit(lines)
        (data / name).write_bytes(new if isinstance(new, bytes) else ("\n".join(new) + "\n").encode())
        command = c.train(box) if runner == "main" else c.only_test(box)
        check = c.warned(*words) if words else None
        return c.plan(command, names=names, check=check, timeout=timeout)
    return setup


def _line(video, text):
    """Replace the line of ``video`` by ``text``."""
    return lambda lines: [text if line.split()[0].endswith(video) else line for line in lines]


def _symlink_out(box_data_edit):
    def setup(box: Box) -> Plan:
        data = c.copy_data(box)
        c.copy_run(box)
        box_data_edit(box, data)
        return c.plan(c.only_test(box), names=("04_0000", "outside", "link", "ROOT"), timeout=TRAIN_T)
    return setup


def _video_link(box, data):
    os.rename(data / "frames/test/04_0000", box / "outside_video")
    (data / "frames/test/04_0000").symlink_to(box / "outside_video", target_is_directory=True)


def _folder_link(box, data):
    os.rename(data / "frames/test", box / "outside_test")
    (data / "frames/test").symlink_to(box / "outside_test", target_is_directory=True)


def _frame_link(box, data):
    frame = data / "frames/test/04_0000/img_00000003.jpg"
    os.rename(frame, box / "outside.jpg")
    frame.symlink_to(box / "outside.jpg")


def _crlf(box: Box) -> Plan:
    """CRLF line endings are a valid list: exit 0 with the normal results is right."""
    plan = _list(lambda l: ("\r\n".join(l) + "\r\n").encode())(box)
    plan.check = lambda b, o: None if (b / "out/results.json").is_file() else "no results.json"
    return plan


CLASS6 = [
    Case("infer_frame_gap", 6, _frame_folder(_gap, 45, ("gap",))),
    Case("infer_mixed_extensions", 6, _frame_folder(_mixed, 45, ("png",))),
    Case("infer_corrupt_frame", 6, _frame_folder(_corrupt, None, ("img_00000010",))),
    Case("infer_empty_folder", 6, _frame_folder(_empty, None, ("empty",))),
    Case("test_list_frames_99999999", 6, _list(_line("04_0000", "frames/test/04_0000 99999999 1 16 27"), timeout=60)),
    Case("test_list_frames_4500000", 6, _list(_line("04_0000", "frames/test/04_0000 4500000 1 16 27"), timeout=60)),
    Case("train_list_frames_99999999", 6, _list(_line("02_0001", "frames/train/02_0001 0 99999999 1"), "main",
                                                names=("train.txt", "02_0001"), timeout=60)),
    Case("test_interval_past_end", 6, _list(_line("04_0000", "frames/test/04_0000 45 1 16 90"), words=("test.txt",))),
    Case("test_interval_reversed", 6, _list(_line("04_0000", "frames/test/04_0000 45 1 30 10"), words=("test.txt",))),
    Case("test_interval_negative", 6, _list(_line("04_0000", "frames/test/04_0000 45 1 -5 10"), words=("test.txt",))),
    Case("test_duplicate_other_label", 6, _list(lambda l: l + ["frames/test/04_0000 45 0 0 45"], words=("test.txt",))),
    Case("train_duplicate_other_label", 6, _list(lambda l: l + [l[0].rsplit(" ", 1)[0] + " 0"], "main",
                                                 words=("train.txt",), names=("train.txt",))),
    Case("test_anomalous_without_frames", 6, _list(_line("04_0000", "frames/test/04_0000 45 1 10 10"),
                                                   words=("04_0000",))),
    Case("test_label_2_of_2_classes", 6, _list(_line("04_0000", "frames/test/04_0000 45 2 16 27"))),
    Case("test_zero_frames", 6, _list(_line("04_0000", "frames/test/04_0000 0 0 0 0"))),
    Case("test_list_crlf_handled", 6, lambda box: _crlf(box)),
    Case("test_list_utf8_bom", 6, _list(lambda l: ("\ufeff" + "\n".join(l) + "\n").encode("utf-8"))),
    Case("data_root_video_symlink_outside", 6, _symlink_out(_video_link)),
    Case("data_root_folder_symlink_outside", 6, _symlink_out(_folder_link)),
    Case("data_root_frame_symlink_outside", 6, _symlink_out(_frame_link)),
]
# ----------------------------------------------------------------------------- class 7: torchrun and runners
def _torchrun(nproc: int, script: str = "main.py"):
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        command = c.train(box) if script == "main.py" else c.attack(box)
        command = command + ["DATA.VAL_FILE", "data/missing_list.txt"]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   *command[1:]]
        return c.plan(command, names=("missing_list.txt",), timeout=120, strict_last=True)
    return setup


def _runner(script: str, **env: str):
    """bash runners/<script> 1 with a missing list file (absolute paths: runners cd to the repo)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        root = str(box / "data")
        values = {"OUTPUT": str(box / "out"), "PRETRAINED": str(box / "run/checkpoints/best.safetensors"), **env}
        values = {k: v.replace("{box}", str(box.root)).replace("{repo}", str(box.repo)) for k, v in values.items()}
        command = ["env", *[f"{k}={v}" for k, v in values.items()], "bash", str(box.repo / "runners" / script), "1",
                   "--opts", "DATA.ROOT", root, "DATA.TRAIN_FILE", f"{root}/train.txt",
                   "DATA.VAL_FILE", f"{root}/missing_list.txt", *c.SMALL]
        return c.plan(command, names=("missing_list.txt",), timeout=120, strict_last=True)
    return setup


CLASS7 = [
    Case("torchrun_1_main_missing_list", 7, _torchrun(1)),
    Case("torchrun_2_main_missing_list", 7, _torchrun(2)),
    Case("torchrun_1_attack_missing_list", 7, _torchrun(1, "main_attack.py")),
    Case("runner_train_missing_list", 7, _runner("train.sh", CONFIG="{repo}/configs/synthetic/synthetic_ci.yaml",
                                                 PRETRAINED="")),
    Case("runner_attack_missing_list", 7, _runner("attack.sh", CONFIG="{repo}/configs/synthetic/synthetic_ci_attack.yaml")),
]


# ----------------------------------------------------------------------------- class 8: random malformed input
def _random_value(draw: random.Random, depth: int = 0):
    kind = draw.randrange(8 if depth < 3 else 6)
    return [lambda: None, lambda: draw.choice([True, False]), lambda: draw.randint(-10 ** 12, 10 ** 12),
            lambda: draw.choice([0.5, -1e308, 1e-300, 3.0]), lambda: "".join(draw.choice("ab/.{}:0") for _ in range(6)),
            lambda: "last.safetensors", lambda: [_random_value(draw, depth + 1) for _ in range(draw.randrange(4))],
            lambda: {draw.choice(["files", "step", "epoch", "labels", "frame_inds", "num_frames", "size"]):
                     _random_value(draw, depth + 1) for _ in range(draw.randrange(4))}][kind]()


def _fuzz(reader: str, seed: int):
    def setup(box: Box) -> Plan:
        draw = random.Random(seed)
        c.copy_data(box)
        c.copy_run(box)
        if reader == "manifest":
            c.copy_run(box, "mid", "out")
            manifest = json.loads((box / "out/checkpoints/last.manifest.json").read_text())
            key = draw.choice(["files", "step", "epoch"])  # the fields a run acts on
            value = _random_value(draw)
            while isinstance(value, dict) if key == "files" else (type(value) is int and value >= 0):
                value = _random_value(draw)  # a valid value would not be malformed input
            manifest[key] = value
            (box / "out/checkpoints/last.manifest.json").write_text(json.dumps(manifest))
            return c.plan(c.resume(box), names=("manifest",), check=c.warned("manifest"), timeout=TRAIN_T)
        if reader == "pseudo":
            labels = json.loads((box.fix / "pl/pseudo_labels.json").read_text())
            entry = labels[sorted(labels)[draw.randrange(len(labels))]]
            entry[draw.choice(sorted(entry))] = _random_value(draw)
            (box / "labels.json").write_text(json.dumps(labels))
            return c.plan(c.advtrain(box, "out", "ADV_TRAIN.PSEUDO_LABEL_FILE", "labels.json"),
                          names=("labels.json",), timeout=TRAIN_T)
        if reader == "list":
            path = box / "data/test.txt"
            lines = path.read_text().splitlines()
            tokens = lines[0].split()
            tokens[draw.randrange(1, len(tokens))] = draw.choice(["1e3", "-0", "0x10", "٣", "nan", "1_000", "+4"])
            lines[0] = " ".join(tokens)
            path.write_text("\n".join(lines) + "\n")
            return c.plan(c.only_test(box), names=("test.txt",), timeout=TRAIN_T)
        if reader == "state":
            c.copy_run(box, "mid", "out")
            key = draw.choice(["epoch", "step", "extra", "scheduler", "rng", "best_metric"])
            c.edit_state(box / "out/checkpoints", "last", lambda s: s.update({key: _random_value(draw)}))
            return c.plan(c.resume(box), names=("state",), check=c.warned("state"), timeout=TRAIN_T)
        config = {"BASE": [str(box.repo / c.CI)]}
        section = draw.choice(["DATA", "TRAIN", "TEST", "MODEL"])
        config[section] = {draw.choice(["NUM_FRAMES", "BATCH_SIZE", "LR", "EPOCHS", "INPUT_SIZE", "ARCH"]):
                           _random_value(draw)}
        (box / "bad.yaml").write_text(json.dumps(config))
        command = c.train(box)
        command[command.index("-cfg") + 1] = "bad.yaml"
        return c.plan(command, names=("bad.yaml", section), timeout=TRAIN_T)
    return setup


CLASS8 = [Case(f"fuzz_{reader}_seed{seed}", 8, _fuzz(reader, seed))
          for reader in ("manifest", "state", "pseudo", "list", "config") for seed in (1, 2)]
