"""Fuzz every reader of a file a run reads back with hypothesis (issue 15, class 8): the
checkpoint manifest, the checkpoint state file (load_checkpoint, the RNG state, the stored
score threshold), the pseudo-label JSON and results.json read back to identify a run.

Whatever the input, each reader either returns well-formed values or raises the project's
own error type (CheckpointError / DataError), never a KeyError, TypeError, RecursionError or
OverflowError from deep inside. (List files and config: tests/test_fuzz_parsers.py.)
"""
import itertools
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import thresholds
from tests.test_checkpoint import save, trained
from training import checkpoint as ckpt
from training import checkpoint_checks, run_identity
from training.pseudo_labels import read_pseudo_labels
from utils.errors import CheckpointError, DataError

FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_counter = itertools.count()

# Any JSON value (NaN/Infinity included: json.dumps writes them and json.loads accepts them).
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2, max_value=40),
                    st.floats(), st.text(max_size=6), st.sampled_from(["last.yaml", "../x", "/etc/passwd", "0"]))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=16)


def _replace_at(value, path, new):
    """``value`` with the item at ``path`` (a list of keys/indices, followed while possible) replaced."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return new
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)] if isinstance(path[0], int) else path[0]
        return {**value, key: _replace_at(value.get(key), path[1:], new)}
    i = path[0] % len(value) if isinstance(path[0], int) else 0
    return value[:i] + [_replace_at(value[i], path[1:], new)] + value[i + 1:]


_path = st.lists(st.one_of(st.integers(min_value=0, max_value=7), st.text(max_size=6)), max_size=4)
_mutation = st.tuples(_path, _json, st.booleans())


def _mutate(value, mutation):
    path, new, delete = mutation
    if delete and isinstance(value, dict) and value and path and isinstance(path[0], int):
        value = dict(value)
        value.pop(sorted(value)[path[0] % len(value)])
        return value
    return _replace_at(value, path, new)


def _text_of(value):
    return json.dumps(value, allow_nan=True)


_raw_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["[" * 20000 + "]" * 20000, '{"a": ' * 5000 + "1" + "}" * 5000, "1" * 5000,
                     '{"step": 1e400}', '{"epoch": NaN}', "\ufeff{}", "", "null"]),
)


# ----------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A valid 'last' checkpoint: its folder and its manifest."""
    out = tmp_path_factory.mktemp("fuzz_ckpt")
    model, opt, sched = trained()
    save(out, "last", model, opt, sched, extra={"score_threshold": 0.4})
    folder = out / "checkpoints"
    return folder, json.loads((folder / "last.manifest.json").read_text())


def _check_manifest_text(folder, text):
    path = folder / f"fuzz{next(_counter)}.manifest.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    tag = path.name[: -len(".manifest.json")]
    try:
        manifest = ckpt.read_manifest(path, tag)
    except CheckpointError as err:
        assert str(path) in str(err)
    else:
        assert set(manifest["files"]) == {f"{tag}.safetensors", f"{tag}.state.pt", f"{tag}.yaml"}
        assert all(checkpoint_checks.is_int(manifest[k]) and manifest[k] >= 0 for k in ("epoch", "step"))
    ok, problem = ckpt.verify_checkpoint(folder / tag)  # never raises
    assert ok or problem
    path.unlink()


@FUZZ
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_manifest_reader_structured(checkpoint, mutations):
    folder, manifest = checkpoint
    for mutation in mutations:
        manifest = _mutate(manifest, mutation)
    _check_manifest_text(folder, _text_of(manifest))


@FUZZ
@given(text=st.one_of(_raw_text, _json.map(_text_of)))
def test_manifest_reader_raw(checkpoint, text):
    _check_manifest_text(checkpoint[0], text)


# ----------------------------------------------------------------------------- state files
# Values torch.save / torch.load(weights_only=True) round-trip: JSON-like plus tensors.
_state_value = st.one_of(_json, st.sampled_from([torch.zeros(2), torch.tensor(0.5), torch.tensor([1, 2])]),
                         st.lists(st.sampled_from([torch.zeros(1), 1, "x"]), max_size=3))


@pytest.fixture(scope="module")
def state_folder(tmp_path_factory):
    """A checkpoint 'last' without a manifest (so load_checkpoint reads any state file) and its state."""
    out = tmp_path_factory.mktemp("fuzz_state")
    model, opt, sched = trained()
    save(out, "last", model, opt, sched, extra={"score_threshold": 0.4, "threshold": {"f1": 0.4}, "history": [],
                                                "best": {}, "batch_in_epoch": 0})
    folder = out / "checkpoints"
    (folder / "last.manifest.json").unlink()
    return folder, torch.load(folder / "last.state.pt", weights_only=True)


def _check_state_file(folder):
    model, opt, sched = trained(steps=0)
    weights = folder / "last.safetensors"
    try:
        meta = ckpt.load_checkpoint(weights, model, opt, sched)
    except CheckpointError as err:
        assert "last" in str(err)
    else:
        assert checkpoint_checks.is_int(meta["epoch"]) and isinstance(meta["extra"], dict)
        if isinstance(meta["rng"], dict):
            try:
                ckpt.restore_rng_state(meta["rng"])
            except CheckpointError:
                pass
    try:
        value, _ = thresholds.read_stored_threshold(weights)
    except CheckpointError as err:
        assert "last.state.pt" in str(err)
    else:
        assert value is None or 0.0 <= value <= 1.0


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(["epoch", "step", "best_metric", "extra", "rng", "optimizer",
                                                    "scheduler", "config_yaml", "format_version"]),
                                  st.one_of(_state_value, st.dictionaries(
                                      st.sampled_from(["score_threshold", "threshold", "history", "best", "rng",
                                                       "batch_in_epoch", "f1", "python", "state"]),
                                      _state_value, max_size=3))),
                        min_size=1, max_size=3))
def test_state_reader_structured(state_folder, changes):
    folder, state = state_folder
    state = dict(state)
    for key, value in changes:
        state[key] = value
    torch.save(state, folder / "last.state.pt")
    _check_state_file(folder)


@FUZZ
@given(obj=st.one_of(_state_value, st.binary(max_size=64)))
def test_state_reader_raw(state_folder, obj):
    folder, _ = state_folder
    if isinstance(obj, bytes):
        (folder / "last.state.pt").write_bytes(obj)
    else:
        torch.save(obj, folder / "last.state.pt")
    _check_state_file(folder)


@FUZZ
@given(rng=_json)
def test_rng_state_restore(rng):
    saved = ckpt.capture_rng_state()
    try:
        ckpt.restore_rng_state(rng)
    except CheckpointError:
        pass
    finally:
        ckpt.restore_rng_state(saved)


# ----------------------------------------------------------------------------- pseudo labels
class Record:
    def __init__(self, path, num_frames, anomalous):
        self.path, self.num_frames, self.is_anomalous = path, num_frames, anomalous


RECORDS = [Record("a", 30, True), Record("n", 30, False)]
GOOD = {"a": {"num_frames": 30, "frame_inds": [[0, 5], [10, 15], [20, 25]], "labels": [0, 1, 0],
              "scores": [0.1, 0.9, 0.2]},
        "n": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [0]}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_labels")


def _check_labels_text(workdir, text):
    path = workdir / f"p{next(_counter)}.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        labels = read_pseudo_labels(path, RECORDS)
    except DataError as err:
        assert str(path) in str(err)
    else:
        for entry in labels.values():
            assert entry.frame_inds.ndim == 2 and entry.frame_inds.max() < entry.num_frames
            assert entry.frame_inds.min() >= 0 and entry.labels.min() >= 0
            clips = entry.frame_inds[:1]
            assert entry.clip_labels(clips).tolist()[0] in (0, 1)
    path.unlink()


@FUZZ
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_pseudo_label_reader_structured(workdir, mutations):
    labels = GOOD
    for mutation in mutations:
        labels = _mutate(labels, mutation)
    _check_labels_text(workdir, _text_of(labels))


@FUZZ
@given(text=st.one_of(_raw_text, _json.map(_text_of)))
def test_pseudo_label_reader_raw(workdir, text):
    _check_labels_text(workdir, text)


# ----------------------------------------------------------------------------- results.json read back
@FUZZ
@given(text=st.one_of(_raw_text, _json.map(_text_of)))
def test_run_identity_reads_any_results_json(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("fuzz_results")
    (folder / "results.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    kinds = run_identity.folder_contents(folder)
    assert kinds and set(kinds) <= {"training", "pseudo_labels", "evaluation", "attack", "unknown"}


_yaml_text = st.one_of(st.text(max_size=80), _json.map(_text_of),
                       st.sampled_from(["DATA: [1]", "- a", "{a: {b: c}}", "? [a]\n: 1", "a: " + "[" * 600 + "]" * 600,
                                        "\ufeffSEED: 1", "SEED: !!python/object:os.system {}", "&a [*a]"]))


@pytest.fixture(scope="module")
def default_config():
    from utils.config import get_default_config

    return get_default_config()


@settings(FUZZ, max_examples=40)
@given(text=_yaml_text)
def test_run_config_read_back(tmp_path_factory, default_config, text):
    """The config.yaml of the run in an output folder, read back to compare it with a new run."""
    from training.stage import check_output_folder
    from utils.errors import ConfigError

    folder = tmp_path_factory.mktemp("fuzz_config")
    (folder / "results.json").write_text('{"test": {}}')
    (folder / "config.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        check_output_folder(default_config, folder, overwrite=False)
    except ConfigError as err:
        assert str(folder) in str(err)
