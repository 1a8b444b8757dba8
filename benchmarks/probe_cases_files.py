"""Cases of the reliability probe, issue 15 class 4: malformed files the project reads back
(checkpoint manifests, ``state.pt``, pseudo-label JSON, weights with NaN/Inf or integer/bool
tensors, the config saved beside a checkpoint). Checkpoint edits keep the manifest's hashes
valid (probe_common.rehash), so the run really reads the edited value.
"""
from __future__ import annotations

import json
import math

from benchmarks import probe_common as c
from benchmarks.probe_cases import TRAIN_T, _resume_with
from benchmarks.probe_reliability import Box, Case, Plan


def _manifest(change):
    return lambda box, folder: c.edit_manifest(folder, "last", change)


def _manifest_text(text: str):
    return lambda box, folder: (folder / "last.manifest.json").write_text(text)


def _pop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.update({key: value})


MANIFESTS = {
    "files_list": _manifest(lambda m: m.update(files=list(m["files"]))),
    "files_string": _manifest(_set("files", "last.safetensors")),
    "missing_step": _manifest(_pop("step")),
    "step_string": _manifest(lambda m: m.update(step=str(m["step"]))),
    "step_negative": _manifest(_set("step", -5)),
    "entry_size_string": _manifest(lambda m: m["files"]["last.yaml"].update(size="12")),
    "truncated": _manifest_text('{"format_version": 1, "tag": "last", "epo'),
    "json_array": _manifest_text("[1, 2, 3]"),
    "deep_nesting": _manifest_text("[" * 100000 + "]" * 100000),
}


def _state(change, tag="last"):
    return lambda box, folder: c.edit_state(folder, tag, change)


STATES = {
    "extra_list": _state(_set("extra", [1, 2])),
    "extra_string": _state(_set("extra", "oops")),
    "epoch_string": _state(lambda s: s.update(epoch="1")),
    "not_a_dict": _state(lambda s: [1, 2, 3]),
    "batch_in_epoch_negative": _state(lambda s: s["extra"].update(batch_in_epoch=-3)),
}


def _infer_threshold(value):
    """infer.py with best.state.pt's ``extra.score_threshold`` replaced by ``value``."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        folder = c.copy_run(box) / "checkpoints"
        if value == "extra_list":
            c.edit_state(folder, "best", _set("extra", [0.5]))
        else:
            c.edit_state(folder, "best", lambda s: s["extra"].update(score_threshold=value))
        return c.plan(c.infer(box, c.video(box)), names=("threshold", "state.pt"), check=_threshold_used)
    return setup


def _threshold_used(box: Box, output: str) -> str | None:
    """Exit 0 is right when the threshold infer.py used is a number in [0, 1] and a warning
    (not the usual "N% of the frames score above" one) says the stored one was not used."""
    if not (box / "out/summary.json").is_file():
        return "exit 0 and no out/summary.json written"
    used = json.loads((box / "out/summary.json").read_text()).get("threshold")
    if not isinstance(used, (int, float)) or not 0 <= used <= 1:
        return f"exit 0 and scored with the stored threshold {used!r}"
    warnings = [line for line in output.splitlines() if "WARNING" in line and "threshold" in line
                and "of the frames score above" not in line]
    return None if warnings else f"exit 0 with threshold {used} and no warning about the stored one"


def _weights(change_name: str):
    def change(weights: dict) -> None:
        import torch

        name = c.first_float(weights)
        w = weights[name]
        weights[name] = {"nan": lambda: torch.full_like(w, math.nan), "inf": lambda: torch.full_like(w, math.inf),
                         "int": lambda: (w * 100).to(torch.int64), "bool": lambda: w > 0}[change_name]()
    return change


def _bad_weights(kind: str, runner: str):
    """A checkpoint whose first visual projection is NaN/Inf/int64/bool (manifest rehashed)."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        folder = c.copy_run(box) / "checkpoints"
        if runner == "resume":
            folder = c.copy_run(box, "mid", "out") / "checkpoints"
            c.edit_weights(folder, "last", _weights(kind))
            c.edit_weights(folder, "best", _weights(kind))
        else:
            c.edit_weights(folder, "best", _weights(kind))
        commands = {"infer": lambda: c.infer(box, c.video(box)), "only_test": lambda: c.only_test(box),
                    "attack": lambda: c.attack(box), "advtrain": lambda: c.advtrain(box),
                    "resume": lambda: c.resume(box)}
        check = c.infer_scores_ok() if runner == "infer" else None
        return c.plan(commands[runner](), names=("nan", "non-finite", "not finite", "infinite", "integer", "bool"),
                      check=check, timeout=TRAIN_T)
    return setup


def _best_yaml(text: str):
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        (c.copy_run(box) / "checkpoints" / "best.yaml").write_text(text)
        return c.plan(c.infer(box, c.video(box)), names=("best.yaml",))
    return setup


# ----------------------------------------------------------------------------- pseudo labels
def _pseudo(change):
    """Stage 2b (main_advtrain.py) reading an edited copy of the fixture's pseudo_labels.json."""
    def setup(box: Box) -> Plan:
        c.copy_data(box)
        c.copy_run(box)
        labels = json.loads((box.fix / "pl" / "pseudo_labels.json").read_text())
        first = sorted(labels)[0]
        anomalous = next((k for k in sorted(labels) if any(labels[k]["labels"])), first)
        text = change(labels, first, anomalous)
        (box / "labels.json").write_text(text if isinstance(text, str) else json.dumps(labels))
        return c.plan(c.advtrain(box, "out", "ADV_TRAIN.PSEUDO_LABEL_FILE", "labels.json"),
                      names=("labels.json", "pseudo"), timeout=TRAIN_T)
    return setup


def _entry(key_of, field, value):
    def change(labels, first, anomalous):
        labels[first if key_of == "first" else anomalous][field] = value(labels[first]) if callable(value) else value
    return change


def _raw(replace_from: str, replace_to: str, key: str = "labels"):
    """Edit the JSON text (for literals json.dumps cannot write: 1e999, Infinity, NaN)."""
    def change(labels, first, anomalous):
        entry = labels[first]
        text = json.dumps(labels)
        old = json.dumps({key: entry[key]})[1:-1]
        values = entry[key]
        bad = json.dumps(values).replace(replace_from, replace_to, 1)
        return text.replace(old, f'"{key}": {bad}', 1)
    return change


def _deep(labels: dict, first: str) -> str:
    """The first video's labels nested 50,000 lists deep (a parser's recursion limit)."""
    labels[first]["labels"] = "@@DEEP@@"
    return json.dumps(labels).replace('"@@DEEP@@"', "[" * 50000 + "]" * 50000)


PSEUDO = {
    "float_labels": _entry("first", "labels", lambda e: [0.5] * len(e["labels"])),
    "label_2": _entry("first", "labels", lambda e: [2] * len(e["labels"])),
    "label_huge_1e999": _raw("0", "1e999"),
    "frame_infinity": _raw("0", "Infinity", "frame_inds"),
    "label_nan": _raw("0", "NaN"),
    "frame_index_huge_int": _raw("0", str(10 ** 30), "frame_inds"),
    "frame_index_past_video": _entry("first", "frame_inds", lambda e: [[f + 10 ** 6 for f in s] for s in e["frame_inds"]]),
    "frame_index_negative": _entry("first", "frame_inds", lambda e: [[-f - 1 for f in s] for s in e["frame_inds"]]),
    "entry_not_object": lambda labels, first, anomalous: labels.update({first: [1, 2, 3]}),
    "top_level_list": lambda labels, first, anomalous: json.dumps([1, 2, 3]),
    "deep_nesting": lambda labels, first, anomalous: _deep(labels, first),
}


CLASS4 = [Case(f"manifest_{k}_resume", 4, _resume_with(edit)) for k, edit in MANIFESTS.items()]
CLASS4 += [Case("manifest_files_list_explicit_resume", 4,
                lambda box: _explicit_resume(box, MANIFESTS["files_list"]))]
CLASS4 += [Case(f"state_{k}_resume", 4, _resume_with(edit, names=("state.pt",), check=c.warned("state")))
           for k, edit in STATES.items()]
CLASS4 += [Case(f"infer_threshold_{name}", 4, _infer_threshold(value)) for name, value in
           (("string", "abc"), ("above_1", 5.0), ("negative", -1.0), ("nan", math.nan), ("extra_list", "extra_list"))]
CLASS4 += [Case(f"weights_{kind}_{runner}", 4, _bad_weights(kind, runner)) for kind, runner in
           (("nan", "infer"), ("inf", "infer"), ("int", "infer"), ("bool", "infer"), ("nan", "only_test"),
            ("nan", "attack"), ("nan", "advtrain"), ("nan", "resume"))]
CLASS4 += [Case("best_yaml_not_mapping_infer", 4, _best_yaml("- just\n- a list\n")),
           Case("best_yaml_python_tag_infer", 4, _best_yaml("DATA: !!python/object/apply:os.system ['true']\n"))]
CLASS4 += [Case(f"pseudo_{k}_advtrain", 4, _pseudo(change)) for k, change in PSEUDO.items()]


def _explicit_resume(box: Box, edit) -> Plan:
    """--resume naming a checkpoint whose manifest was edited: an error, not a silent skip."""
    c.copy_data(box)
    c.copy_run(box, "mid", "out")
    edit(box, box / "out" / "checkpoints")
    return c.plan(c.resume(box, args=("--resume", "out/checkpoints/last.safetensors")), names=("manifest",),
                  timeout=TRAIN_T)
