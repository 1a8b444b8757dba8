"""Fuzz the list-file parser, labels/ground-truth CSV readers and config loader with hypothesis.

Whatever the input, each either parses into well-formed values or raises the project's own
error type (ListFileError / ConfigError), never a raw exception from deep inside.
"""
import itertools

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.lists import frame_labels, parse_list_file, read_label_csv
from datasets.make_lists import read_gt_csv
from utils.config import get_default_config, load_config_file, merge_opts
from utils.errors import ConfigError, ListFileError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write_bytes(folder, data, suffix=".txt"):
    path = folder / f"f{next(_counter)}{suffix}"
    path.write_bytes(data)
    return path


# Tokens that look like list columns: numbers (some negative, some huge), words, unicode digits.
_token = st.one_of(
    st.integers(min_value=-3, max_value=400).map(str),
    st.integers().map(str),
    st.sampled_from(["-1", "0", "1.5", "1e3", "+4", "٣", "0x10", "a/b.mp4", "../x", "#c", "", "\t", "\x00"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6),
)
_line = st.lists(_token, min_size=0, max_size=9).map(" ".join)
_list_text = st.lists(_line, max_size=8).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n", "\r"]).map(lambda sep: sep.join(lines))
)


def check_records(records):
    assert records
    for record in records:
        assert record.num_frames > 0 and record.label >= 0 and record.line >= 1
        assert all(0 <= s <= e for s, e in record.intervals)
        if record.num_frames <= 10**5:  # keep the fuzz run small; the parser caps counts at MAX_FRAMES
            labels = frame_labels(record, count_start_zero=True)
            assert labels.shape == (record.num_frames,) and set(labels.tolist()) <= {0, 1}


@FUZZ
@given(text=_list_text, kind=st.sampled_from(["auto", "train", "test"]))
def test_list_parser_structured(workdir, text, kind):
    path = write_bytes(workdir, text.encode("utf-8"))
    try:
        records = parse_list_file(path, kind=kind)
    except ListFileError as err:
        assert str(path) in str(err)
    else:
        check_records(records)


@FUZZ
@given(data=st.binary(max_size=200))
def test_list_parser_raw_bytes(workdir, data):
    path = write_bytes(workdir, data)
    try:
        check_records(parse_list_file(path))
    except ListFileError:
        pass


_csv_cell = st.one_of(st.sampled_from(["id", "name", "0", "1", "2", "-1", "normal", "", " ", '"', "a,b"]),
                      st.text(max_size=5))
_csv_text = st.lists(st.lists(_csv_cell, max_size=4).map(",".join), max_size=5).map("\n".join)


@FUZZ
@given(text=_csv_text)
def test_label_csv(workdir, text):
    path = write_bytes(workdir, text.encode("utf-8"), ".csv")
    try:
        names = read_label_csv(path)
    except ListFileError:
        return
    assert names and all(isinstance(n, str) and n for n in names)


@FUZZ
@given(text=st.lists(st.lists(st.one_of(
    st.sampled_from(["video", "label", "split", "intervals", "train", "test", "1-4;6-9", "3-1", "v"]),
    st.text(max_size=5)), max_size=5).map(",".join), max_size=5).map("\n".join))
def test_gt_csv(workdir, text):
    path = write_bytes(workdir, text.encode("utf-8"), ".csv")
    try:
        truth = read_gt_csv(path)
    except ListFileError:
        return
    for item in truth.values():
        assert item.label >= 0 and all(0 <= s < e for s, e in item.intervals)


# Config: random mappings over real and misspelt keys with values of every YAML type.
_yaml_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
    st.sampled_from(["8e-6", "None", "true", "1", "bf16", "mil", "2001-13-45"]),
)
_sections = {name: list(node.keys()) for name, node in get_default_config().items() if hasattr(node, "keys")}
_key = st.one_of(st.sampled_from(sorted(_sections)), st.sampled_from(["OUTPUT", "SEED", "BASE", "DATAA"]),
                 st.text(max_size=6))


def _section_value(section):
    keys = st.one_of(st.sampled_from(_sections.get(section, ["X"])), st.text(max_size=5))
    return st.one_of(_yaml_scalar, st.dictionaries(keys, st.one_of(_yaml_scalar, st.lists(_yaml_scalar, max_size=2)),
                                                   max_size=4))


_config_mapping = st.lists(_key, max_size=6, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: _section_value(k) for k in keys})
)


def _load(workdir, text):
    path = write_bytes(workdir, text.encode("utf-8"), ".yaml")
    try:
        cfg = load_config_file(path)
    except ConfigError as err:
        assert str(err)
    else:
        assert cfg.is_frozen()


@FUZZ
@given(mapping=_config_mapping)
def test_config_loader_structured(workdir, mapping):
    _load(workdir, yaml.safe_dump(mapping, allow_unicode=True))


_yaml_lines = [
    "DATA:", "  ROOT: x", "  NUM_FRAMES: 2001-13-45", "TRAIN: {LR: 1e-x}", "BASE: [nope.yaml]", "BASE: 3",
    "- a", "? [a]\n: 1", "&a [*a]", "MODEL:\n  PRETRAINED: None", "\t", "!!python/object:os.system {}",
    "x: !!binary AAAA", "SEED: 99999999999999999999999", "TEST:\n  NUM_CROP: 2",
]


@FUZZ
@given(text=st.one_of(st.text(max_size=120), st.lists(st.sampled_from(_yaml_lines), max_size=6).map("\n".join)))
def test_config_loader_raw_text(workdir, text):
    _load(workdir, text)


_opt_item = st.one_of(
    st.sampled_from(["TRAIN.LR", "TRAIN.EPOCHS", "MODEL.PRETRAINED", "TEST.SMOOTH", "DATA", "SEED", "SEED.X",
                     "DATA.ROOT", "", ".", "TRAIN..LR", "nan", "1e-4", "-1", "true", "None", "[1, 2]"]),
    st.text(max_size=8),
)


@FUZZ
@given(opts=st.lists(_opt_item, max_size=6))
def test_opts_merge(opts):
    cfg = get_default_config()
    try:
        merge_opts(cfg, opts)
    except ConfigError as err:
        assert str(err)
