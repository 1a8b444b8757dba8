"""Commands, sandbox copies and file edits shared by the reliability probe's cases.

Commands run with cwd = the sandbox and relative data paths (``data/train.txt``), so a copy
of the fixture's run in a sandbox is "the same run" for the stages' output-folder check and
nothing relative ever lands in the repository under probe. Checkpoint edits rewrite the
manifest's sizes and hashes, so the edited file is what a run really reads, not a file the
checksum check already refuses.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

from benchmarks.probe_reliability import Box, Check, Plan

CI = "configs/synthetic/synthetic_ci.yaml"
CI_ADV = "configs/synthetic/synthetic_ci_advtrain.yaml"
CI_ATTACK = "configs/synthetic/synthetic_ci_attack.yaml"
SMALL = ["DATA.NUM_CLIPS", "2", "TRAIN.ACCUMULATION_STEPS", "1", "TRAIN.TENSORBOARD", "False", "PRINT_FREQ", "100"]
RUN_FILES = ("config.yaml", "results.json", "scores.npz", "plots/*", "metrics.csv", "checkpoints/*")


def data_opts(box: Box, root: str = "data") -> list[str]:
    return ["DATA.ROOT", root, "DATA.TRAIN_FILE", f"{root}/train.txt", "DATA.VAL_FILE", f"{root}/test.txt",
            "DATA.LABEL_LIST", str(box.repo / "configs/labels_2.csv")]


def entry(box: Box, script: str, config: str | None, output: str, *args: str, opts=()) -> list[str]:
    """``python REPO/script -cfg REPO/config --output OUTPUT args --opts data SMALL opts``."""
    command = [sys.executable, str(box.repo / script)]
    if config:
        command += ["-cfg", str(box.repo / config)]
    return command + ["--output", output, *args, "--opts", *data_opts(box), *SMALL, *opts]


def train(box: Box, output: str = "out", *opts: str, args=()) -> list[str]:
    return entry(box, "main.py", CI, output, *args, opts=opts)


def resume(box: Box, *opts: str, args=()) -> list[str]:
    """main.py that auto-resumes the copy of the fixture's stopped 2-epoch run in ``out``."""
    return entry(box, "main.py", CI, "out", *args, opts=("TRAIN.EPOCHS", "2", "TRAIN.AUTO_RESUME", "True", *opts))


def genlabels(box: Box, output: str, run: Path | str, *opts: str) -> list[str]:
    return entry(box, "main_advtrain.py", CI_ADV, output, "--only_test", "--pretrained",
                 str(Path(run) / "checkpoints/best.safetensors"), opts=opts)


def advtrain(box: Box, output: str = "out", *opts: str) -> list[str]:
    """Stage 2b on the fixture's pseudo labels (read only), unless ``opts`` name another file."""
    labels = str(box.fix / "pl" / "pseudo_labels.json")
    return entry(box, "main_advtrain.py", CI_ADV, output, "--pretrained", "run/checkpoints/best.safetensors",
                 opts=("ATTACK.STEPS", "1", "ADV_TRAIN.PSEUDO_LABEL_FILE", labels, *opts))


def attack(box: Box, output: str = "out", *opts: str, weights: str = "run/checkpoints/best.safetensors") -> list[str]:
    return entry(box, "main_attack.py", CI_ATTACK, output, "--pretrained", weights, opts=("ATTACK.STEPS", "1", *opts))


def only_test(box: Box, output: str = "out", *opts: str, weights: str = "run/checkpoints/best.safetensors"):
    return entry(box, "main.py", CI, output, "--only_test", "--pretrained", weights, opts=opts)


def infer(box: Box, *videos: str, output: str = "out", weights: str = "run/checkpoints/best.safetensors",
          args=()) -> list[str]:
    return [sys.executable, str(box.repo / "infer.py"), "--pretrained", weights, *videos, "--output", output,
            "--no-progress", "--device", "cpu", *args]


def copy_data(box: Box, name: str = "data") -> Path:
    shutil.copytree(box.fix / "data", box / name, symlinks=True)
    return box / name


def copy_run(box: Box, which: str = "run", to: str = "run") -> Path:
    shutil.copytree(box.fix / which, box / to, symlinks=True)
    return box / to


def video(box: Box, name: str = "04_0000") -> str:
    return f"data/frames/test/{name}"


# ----------------------------------------------------------------------------- checkpoint edits
def edit_manifest(folder: Path, tag: str, change) -> None:
    """Load ``tag``'s manifest, let ``change(manifest)`` edit it in place (or return a new value), write it."""
    path = folder / f"{tag}.manifest.json"
    manifest = json.loads(path.read_text())
    new = change(manifest)
    path.write_text(json.dumps(manifest if new is None else new, indent=2))


def rehash(folder: Path, tag: str) -> None:
    """Refresh the manifest's size and sha256 of every file of ``tag`` (after an edit)."""
    def change(manifest):
        for name in manifest["files"]:
            data = (folder / name).read_bytes()
            manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    edit_manifest(folder, tag, change)


def edit_state(folder: Path, tag: str, change) -> None:
    """Edit ``tag``.state.pt with ``change(state)`` and keep the manifest valid."""
    import torch

    path = folder / f"{tag}.state.pt"
    state = torch.load(path, weights_only=True)
    new = change(state)
    torch.save(state if new is None else new, path)
    rehash(folder, tag)


def edit_weights(folder: Path, tag: str, change) -> None:
    """Edit ``tag``.safetensors (dict of tensors) with ``change(weights)``; keep the manifest valid."""
    from safetensors.torch import load_file, save_file

    path = folder / f"{tag}.safetensors"
    weights = load_file(path)
    change(weights)
    save_file({k: v.contiguous() for k, v in weights.items()}, path, metadata={"tag": tag})
    rehash(folder, tag)


def first_float(weights: dict) -> str:
    """Name of the first floating-point weight that every forward pass uses (a visual one)."""
    names = [k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1]
    visual = [k for k in names if "visual" in k and "proj" in k] or names
    return visual[0]


# ----------------------------------------------------------------------------- checks of exit-0 runs
def warned(*words: str) -> Check:
    """Exit 0 is right when a warning (or error) line names all ``words``."""
    def check(box: Box, output: str) -> str | None:
        for line in output.splitlines():
            if re.search(r"\bWARNING\b|\bwarning:", line) and all(w.lower() in line.lower() for w in words):
                return None
        return f"exit 0 and no warning naming {list(words)}"
    return check


def infer_scores_ok(expected_frames: int | None = None, video_name: str = "04_0000") -> Check:
    """Exit 0 of infer.py is right when every score is finite (and all frames were scored)."""
    def check(box: Box, output: str) -> str | None:
        path = box / "out" / video_name / "scores.json"
        if not path.is_file():
            return f"no {path.relative_to(box.root)} written"
        data = json.loads(path.read_text())
        rows = (box / "out" / video_name / "scores.csv").read_text().splitlines()[1:]
        bad = [r for r in rows if not math.isfinite(float(r.split(",")[-1]))]
        if bad:
            return f"{len(bad)} of {len(rows)} frame scores are not finite (scores.csv)"
        if expected_frames is not None and data.get("num_frames") != expected_frames:
            return f"scored {data.get('num_frames')} frames, the folder holds {expected_frames}"
        return None
    return check


def valid_checkpoint_left(box: Box, output: str) -> str | None:
    """After a failed save: some checkpoint in out/checkpoints still matches its manifest."""
    folder = box / "out" / "checkpoints"
    for path in sorted(folder.glob("*.manifest.json")):
        try:
            files = json.loads(path.read_text())["files"]
            if all(hashlib.sha256((folder / n).read_bytes()).hexdigest() == e["sha256"] for n, e in files.items()):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return "no valid checkpoint left in out/checkpoints"


def all_of(*checks: Check) -> Check:
    def check(box: Box, output: str) -> str | None:
        for c in checks:
            problem = c(box, output)
            if problem:
                return problem
        return None
    return check


def plan(commands, **kwargs) -> Plan:
    return Plan(commands if isinstance(commands[0], list) else [commands], **kwargs)
