"""Every file a run reads back is validated, and no path built from one leaves its folder
(issue 15, classes 1 and 4): checkpoint manifests and state files, the stored score
threshold, the RNG state, resumed weights, pseudo-label JSON, the demo's meta.json and a
results.json read back to identify a run. Each case here slipped through (a traceback, a
silently wrong value, or a file outside the run that was touched) before issue 15."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from apps import demo_summary, thresholds
from tests.test_checkpoint import save, trained
from tests.toy_models import ToyVideoModel
from training import checkpoint as ckpt
from training import run_identity
from training.pseudo_labels import read_pseudo_label_file, read_pseudo_labels
from utils.errors import CheckpointError, DataError

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def run(tmp_path):
    """An output folder with a valid 'last' checkpoint, and a victim file beside it."""
    out = tmp_path / "out"
    model, opt, sched = trained()
    save(out, "last", model, opt, sched, extra={"score_threshold": 0.4, "batch_in_epoch": 0})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return out, out / "checkpoints", victim


def remanifest(folder, tag="last"):
    """Refresh the manifest's sizes and hashes after a file of the checkpoint was edited, as a
    careful user (or a program rewriting the files) would: the checkpoint stays "valid"."""
    path = folder / f"{tag}.manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(manifest))


def edit_state(folder, change, tag="last"):
    path = folder / f"{tag}.state.pt"
    state = torch.load(path, weights_only=True)
    state = change(state)
    torch.save(state, path)
    remanifest(folder, tag)
    return path


def edit_manifest_text(folder, text, tag="last"):
    path = folder / f"{tag}.manifest.json"
    path.write_text(text)
    return path


def resume(out):
    model, opt, sched = trained(steps=0)
    return ckpt.load_checkpoint(out / "checkpoints" / "last.safetensors", model, opt, sched)


# ----------------------------------------------------------------------------- class 1: paths
def test_symlinked_manifest_is_refused(run):
    out, folder, victim = run
    real = folder / "last.manifest.json"
    outside = victim.with_name("manifest_elsewhere.json")
    outside.write_text(real.read_text())
    real.unlink()
    os.symlink(outside, real)
    ok, problem = ckpt.verify_checkpoint(folder / "last")
    assert not ok and "symbolic link" in problem and str(real) in problem
    assert ckpt.find_auto_resume(out) is None


def test_removing_a_checkpoint_never_leaves_its_folder(run):
    out, folder, victim = run
    target = victim.with_name("victim.manifest.json")
    target.write_text("precious")
    with pytest.raises(CheckpointError, match="not a file of the checkpoint folder"):
        ckpt._remove_checkpoint(folder, "../../victim")
    assert target.read_text() == "precious"


def test_a_symlinked_previous_copy_is_replaced_not_written_through(run):
    out, folder, victim = run
    os.symlink(victim, folder / "last.previous.state.pt")
    model, opt, sched = trained()
    save(out, "last", model, opt, sched, epoch=2, step=4)
    assert victim.read_text() == "precious" and ckpt.verify_checkpoint(folder / "last")[0]


# ----------------------------------------------------------------------------- class 4: manifests
@pytest.mark.parametrize("text,match", [
    pytest.param(DEEP, "RecursionError", id="deep"),
    pytest.param("NONE", "NaN is not valid JSON", id="nan"),
    pytest.param("\xff\xfe", "unreadable", id="not-utf8"),
])
def test_unparsable_manifest_is_skipped_with_its_name(run, text, match):
    out, folder, _ = run
    path = folder / "last.manifest.json"
    if text == "NONE":
        manifest = json.loads(path.read_text())
        text = json.dumps({**manifest, "best_metric": float("nan")})
    if text == "\xff\xfe":
        path.write_bytes(b"\xff\xfe{")
    else:
        path.write_text(text)
    ok, problem = ckpt.verify_checkpoint(folder / "last")
    assert not ok and match in problem and str(path) in problem
    assert ckpt.find_auto_resume(out) is None


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(tag="best"), "'tag' is 'best'"),
    (lambda m: m.update(format_version=99), "'format_version' 99"),
    (lambda m: m.update(format_version="1"), "'format_version'"),
    (lambda m: m.update(best_metric="0.9"), "'best_metric' must be a number"),
    (lambda m: m.update(step=True), "'step' must be a non-negative integer"),
    (lambda m: m.update(epoch=-1), "'epoch' must be a non-negative integer"),
    (lambda m: m.update(files="last.safetensors"), "'files' must name exactly"),
    (lambda m: m["files"]["last.yaml"].update(size=-1), "integer 'size' >= 0"),
])
def test_manifest_fields_are_checked(run, change, match):
    out, folder, _ = run
    path = folder / "last.manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    ok, problem = ckpt.verify_checkpoint(folder / "last")
    assert not ok and match in problem and str(path) in problem
    assert ckpt.find_auto_resume(out) is None


def test_manifest_without_a_tag_still_resumes(run):
    out, folder, _ = run
    path = folder / "last.manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["tag"]
    path.write_text(json.dumps(manifest))
    assert ckpt.find_auto_resume(out) == str(folder / "last.safetensors")


# ----------------------------------------------------------------------------- class 4: state.pt
@pytest.mark.parametrize("change,match", [
    (lambda s: [1, 2], "holds a list, not a checkpoint state dict"),
    (lambda s: {**s, "extra": [1, 2]}, "'extra' must be dict, got list"),
    (lambda s: {**s, "epoch": "1"}, "'epoch' must be a non-negative integer"),
    (lambda s: {k: v for k, v in s.items() if k != "step"}, "'step' must be a non-negative integer"),
    (lambda s: {**s, "best_metric": "high"}, "'best_metric' must be a number"),
    (lambda s: {**s, "optimizer": [1]}, "'optimizer' must be dict or None"),
    (lambda s: {**s, "extra": {"history": "x"}}, "'history' must be list"),
    (lambda s: {**s, "extra": {"batch_in_epoch": -3}}, "'extra.batch_in_epoch'"),
    (lambda s: {**s, "extra": {"score_threshold": "0.7"}}, "score threshold must be a number"),
    (lambda s: {**s, "extra": {"threshold": {"f1": 1.5}}}, "score threshold 1.5 is not within"),
])
def test_malformed_state_file_is_a_checkpoint_error_naming_it(run, change, match):
    out, folder, _ = run
    path = edit_state(folder, change)
    with pytest.raises(CheckpointError, match=match) as err:
        resume(out)
    assert str(path) in str(err.value)


def test_malformed_optimizer_state_is_a_checkpoint_error(run):
    out, folder, _ = run
    edit_state(folder, lambda s: {**s, "optimizer": {"state": 3, "param_groups": [{"params": "x"}]}})
    with pytest.raises(CheckpointError, match="optimizer state"):
        resume(out)


@pytest.mark.parametrize("rng", [{"python": 1}, {}, {"python": {"version": 3, "state": "x", "gauss": None}}])
def test_malformed_rng_state_is_a_checkpoint_error(rng):
    with pytest.raises(CheckpointError, match="RNG state is malformed"):
        ckpt.restore_rng_state(rng)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_resumed_weights_with_nan_or_inf_are_refused(tmp_path, value):
    model, opt, sched = trained()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = value
    save(tmp_path, "last", model, opt, sched)
    with pytest.raises(CheckpointError, match="NaN/Inf values"):
        resume(tmp_path)


def test_resumed_integer_weights_are_refused(tmp_path):
    from models.checkpoint_io import save_safetensors

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    state = {k: v.to(torch.int64) for k, v in ToyVideoModel(dropout=0.0).state_dict().items()}
    save_safetensors(state, folder / "last.safetensors")  # weights only, no manifest
    with pytest.raises(CheckpointError, match="integer/bool tensors"):
        ckpt.load_checkpoint(folder / "last.safetensors", ToyVideoModel(dropout=0.0))


# ----------------------------------------------------------------------------- class 4: stored threshold
@pytest.mark.parametrize("extra,match", [
    ({"score_threshold": "0.7"}, "must be a number"),
    ({"score_threshold": "abc"}, "must be a number"),
    ({"score_threshold": True}, "must be a number"),
    ({"score_threshold": float("nan")}, "not within"),
    ({"score_threshold": 1.7}, "not within"),
    ({"score_threshold": -0.1}, "not within"),
    ({"threshold": {"f1": "0.25"}}, "extra.threshold.f1"),
    ({"threshold": [0.25]}, "'extra.threshold' must be a dict"),
])
def test_bad_stored_threshold_is_refused(tmp_path, extra, match):
    model, opt, sched = trained()
    weights = save(tmp_path, "best", model, opt, sched, extra=extra)
    with pytest.raises(CheckpointError, match=match) as err:
        thresholds.resolve_threshold(None, weights)
    assert "best.state.pt" in str(err.value) and "--threshold" in str(err.value)
    assert thresholds.resolve_threshold(0.3, weights)[0] == 0.3  # the flag still overrides it


@pytest.mark.parametrize("state", [[0.5], {"extra": [0.5]}])
def test_state_file_of_the_wrong_shape_is_refused_by_infer(tmp_path, state):
    model, opt, sched = trained()
    weights = save(tmp_path, "best", model, opt, sched)
    torch.save(state, ckpt.checkpoint_file(weights, ".state.pt"))
    with pytest.raises(CheckpointError, match="best.state.pt"):
        thresholds.read_stored_threshold(weights)


def test_valid_stored_thresholds_are_read(tmp_path):
    model, opt, sched = trained()
    weights = save(tmp_path, "best", model, opt, sched, extra={"threshold": {"f1": 0}})
    assert thresholds.read_stored_threshold(weights)[0] == 0.0


# ----------------------------------------------------------------------------- class 4: pseudo labels
class Record:
    def __init__(self, path, num_frames, anomalous):
        self.path, self.num_frames, self.is_anomalous = path, num_frames, anomalous


RECORDS = [Record("a", 30, True), Record("n", 30, False)]
GOOD = {"num_frames": 30, "frame_inds": [[0, 5], [10, 15], [20, 25]], "labels": [0, 1, 0],
        "scores": [0.1, 0.9, 0.2]}


def write(tmp_path, text):
    path = tmp_path / "pseudo_labels.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("change,match", [
    (dict(labels=[0, 0.5, 0]), r"labels holds 0.5"),
    (dict(labels=[0, True, 0]), r"labels holds True"),
    (dict(labels=[0, 10**30, 0]), r"labels holds 1000000000000000000000000000000"),
    (dict(labels=[0, -1, 0]), r"labels holds -1"),
    (dict(labels="011"), r"labels must be a non-empty list"),
    (dict(frame_inds=[[0, 5], [10, "15"], [20, 25]]), r"frame_inds\[1\] holds '15'"),
    (dict(frame_inds=[[0, 5], [10, 15.0], [20, 25]]), r"frame_inds\[1\] holds 15.0"),
    (dict(frame_inds=[[0, 5], [10, 15], [20, 30]]), r"below num_frames=30"),
    (dict(frame_inds=[[0, 5], [10, 15], [20]]), r"same number of frames"),
    (dict(frame_inds=[[0, 5], [10, 15], [[20], [25]]]), r"frame_inds\[2\] holds \[20\]"),
    (dict(num_frames=30.0), r"num_frames must be a positive integer"),
    (dict(scores=5), r"scores must be a list of 3 numbers"),
    (dict(scores=["a", "b", "c"]), r"scores must be a list of 3 numbers"),
    (dict(scores=[0.1, 0.9]), r"scores must be a list of 3 numbers"),
    (dict(scores=[0.1, 1.5, 0.2]), r"scores must be a list of 3 numbers"),
])
def test_malformed_entry_is_a_data_error_naming_file_and_video(tmp_path, change, match):
    path = write(tmp_path, json.dumps({"a": {**GOOD, **change}}))
    with pytest.raises(DataError, match=match) as err:
        read_pseudo_labels(path, RECORDS)
    assert str(path) in str(err.value) and "'a'" in str(err.value) and "regenerate" in str(err.value)


@pytest.mark.parametrize("text,match", [
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [NaN]}}', "NaN is not a JSON number"),
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [Infinity]}}', "Infinity is not a JSON number"),
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [1], "scores": [-Infinity]}}', "-Infinity"),
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [' + "9" * 5000 + "]}}", "ValueError"),  # > 4300 digits
    pytest.param('{"a": ' + DEEP + "}", "RecursionError", id="deep"),
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [1], "scores": [1e400]}}', "scores must be"),
    ('{"a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [1]},'
     ' "a": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [0]}}', "duplicate key"),
])
def test_unparsable_file_is_a_data_error(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=match) as err:
        read_pseudo_labels(path, RECORDS)
    assert str(path) in str(err.value)


def test_good_file_reads_with_its_scores(tmp_path):
    labels = read_pseudo_labels(write(tmp_path, json.dumps({"a": GOOD})), RECORDS)
    assert labels["a"].labels.tolist() == [0, 1, 0] and labels["a"].scores.tolist() == [0.1, 0.9, 0.2]


def test_demo_summary_validates_its_pseudo_labels_and_meta(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"videos": {"a": {"label": 1, "interval": [10, 20]}}}))
    ragged = write(tmp_path, json.dumps({"a": {**GOOD, "frame_inds": [[0, 5], [10], [20, 25]]}}))
    with pytest.raises(DataError, match="same number of frames"):
        demo_summary.pseudo_label_agreement(ragged, tmp_path)
    good = write(tmp_path, json.dumps({"a": GOOD}))
    assert demo_summary.pseudo_label_agreement(good, tmp_path)["segments"] == 3
    (tmp_path / "meta.json").write_text(json.dumps({"videos": {"a": {"label": 1, "interval": "10-20"}}}))
    with pytest.raises(DataError, match="meta.json: video 'a' has interval '10-20'"):
        demo_summary.pseudo_label_agreement(good, tmp_path)
    (tmp_path / "meta.json").write_text("[]")
    with pytest.raises(DataError, match="meta.json is not a readable JSON object"):
        demo_summary.pseudo_label_agreement(good, tmp_path)


def test_record_free_reader_checks_against_the_entry_frames(tmp_path):
    path = write(tmp_path, json.dumps({"x": {**GOOD, "num_frames": 25}}))
    with pytest.raises(DataError, match="below num_frames=25"):
        read_pseudo_label_file(path)


# ----------------------------------------------------------------------------- results.json read back
def test_deeply_nested_results_json_marks_an_unknown_run(tmp_path):
    (tmp_path / "results.json").write_text(DEEP)
    assert run_identity.folder_contents(tmp_path) == ["unknown"]



# ----------------------------------------------------------------------------- infer: NaN scores
class FrameSource:
    """A stand-in for datasets.video_probe's source: ``num_frames`` random uint8 frames."""

    def __init__(self, num_frames, size):
        self.path, self.num_frames = Path("clip_frames"), num_frames
        frames = torch.randint(0, 256, (num_frames, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        self.reader = type("Reader", (), {"read": staticmethod(lambda inds: frames[list(inds)])})()


def test_infer_refuses_nan_scores_of_finite_but_overflowing_weights():
    """Weights pass the NaN/Inf check but overflow in the forward pass (an edited checkpoint):
    infer.py wrote NaN scores and exited 0; now the video is refused naming the cause."""
    from apps import inference
    from clip import tokenize
    from models import xclip
    from utils.config import get_default_config

    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2)
    cfg = get_default_config()
    cfg.DATA.NUM_FRAMES, cfg.DATA.INPUT_SIZE, cfg.TEST.NUM_CROP, cfg.TEST.NUM_CLIP = 2, model.input_resolution, 1, 1
    source = FrameSource(8, model.input_resolution)
    tokens = tokenize(["normal", "abnormal"])
    assert np.isfinite(inference.score_video(model, tokens, source, cfg, show_progress=False).scores).all()
    with torch.no_grad():
        model.prompts_visual_proj.mul_(1e36)
    with pytest.raises(CheckpointError, match=r"clip_frames: the model's clean P\(abnormal\) is NaN/Inf"):
        inference.score_video(model, tokens, source, cfg, show_progress=False)


@pytest.mark.parametrize("data", [b"[1, 2]\n", b"3\n", b"\xff\xfe\x00", b"a: " + b"[" * 600 + b"]" * 600],
                         ids=["list", "scalar", "not-utf8", "deep"])
def test_unreadable_config_of_the_run_in_a_folder_is_a_config_error(tmp_path, data):
    """config.yaml read back to compare a new run with the folder's: a traceback before."""
    from training.stage import check_output_folder
    from utils.config import get_default_config
    from utils.errors import ConfigError

    (tmp_path / "results.json").write_text(json.dumps({"test": {}}))
    (tmp_path / "config.yaml").write_bytes(data)
    with pytest.raises(ConfigError, match=r"config.yaml .*cannot be read|config.yaml .*not a mapping") as err:
        check_output_folder(get_default_config(), tmp_path, overwrite=False)
    assert "--overwrite" in str(err.value)
    assert check_output_folder(get_default_config(), tmp_path, overwrite=True) is False
