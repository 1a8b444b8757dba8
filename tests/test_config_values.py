"""Issue 15, class 5: every config value is checked when the config is read.

Before, only types were checked: a negative learning rate trained by gradient ascent, a
``{:s}`` file-name template or a negative DATA.NUM_WORKERS ended in a traceback inside the
loader, and ``demo.py --jobs -1`` waited forever. Now each key's rule
(utils/config_values.py) raises a ConfigError that names the key, where it was set and what
to do; the demo's counts are argparse errors (exit code 2).
"""
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.config import get_config, load_config_file
from utils.config_values import VALUE_RULES, filename_template_problem
from utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_local_rank_env(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def empty_yaml(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def config(yaml_path, opts=(), **flags):
    return get_config(types.SimpleNamespace(config=str(yaml_path), opts=list(opts), **flags))


BAD_OPTS = [
    ("DATA.NUM_WORKERS", "-1", ">= 0"),
    ("DATA.PREFETCH_FACTOR", "0", ">= 1"),
    ("DATA.PREFETCH_FACTOR", "-2", ">= 1"),
    ("TRAIN.LR", "0", "> 0"),
    ("TRAIN.LR", "-1e-5", "> 0"),
    ("TRAIN.WEIGHT_DECAY", "-0.1", ">= 0"),
    ("TRAIN.EPOCHS", "0", "--only_test"),
    ("TRAIN.EPOCHS", "-3", ">= 1"),
    ("TRAIN.WARMUP_EPOCHS", "-1", ">= 0"),
    ("TRAIN.CLIP_GRAD", "-1", ">= 0"),
    ("TRAIN.W_SMOOTH", "-0.01", ">= 0"),
    ("TRAIN.W_SPARSE", "-1", ">= 0"),
    ("MODEL.DROP_PATH_RATE", "1.0", r"\[0, 1\)"),
    ("MODEL.DROP_PATH_RATE", "-0.1", r"\[0, 1\)"),
    ("MODEL.PROMPTS_LAYERS", "-1", ">= 0"),
    ("MODEL.MIT_LAYERS", "-1", ">= 0"),
    ("ADV_TRAIN.EPS", "-2", ">= 0"),
    ("ADV_TRAIN.CLEAN_WEIGHT", "1.5", r"\[0, 1\]"),
    ("ADV_TRAIN.SRD_PROB", "1.01", "probability"),
    ("ADV_TRAIN.SRD_PROB", "-0.5", "probability"),
    ("ATTACK.STEPS", "-1", ">= 0"),
    ("AUG.COLOR_JITTER", "2", "probability"),
    ("AUG.GRAY_SCALE", "-0.2", "probability"),
    ("ROBUSTNESS.SWEEP_EPS", "[1, -2]", ">= 0"),
    ("ROBUSTNESS.SWEEP_EPS", "[.nan]", ">= 0"),
    ("ROBUSTNESS.SWEEP_EPS", "[1e-3]", "YAML reads as text"),
    ("ROBUSTNESS.SWEEP_STEPS", "[10, -1]", "step counts >= 0"),
    ("ROBUSTNESS.SWEEP_STEPS", "[2.5]", "whole step counts"),
    ("ROBUSTNESS.SWEEP_STEPS", "[true]", "whole step counts"),
    ("ROBUSTNESS.REPORT_MODELS", "[{a: 1}]", "NAME=CKPT"),
    ("ROBUSTNESS.SANITY_TOL", "-0.1", r"\[0, 1\]"),
    ("SEED", str(2**64), r"\[-2\^62, 2\^62\]"),
    ("SEED", str(-2**63), r"\[-2\^62, 2\^62\]"),
    ("DATA.ROOT", "data\x00/x", "NUL"),
    ("OUTPUT", "out\x00", "NUL"),
    ("MODEL.PRETRAINED", "w\x00.pth", "NUL"),
]


@pytest.mark.parametrize("key,value,requirement", BAD_OPTS, ids=[f"{k}={v!r}" for k, v, _ in BAD_OPTS])
def test_bad_values_name_the_key_the_source_and_the_rule(empty_yaml, key, value, requirement):
    with pytest.raises(ConfigError, match=rf"^{key} \(set in --opts\) must be .*{requirement}"):
        config(empty_yaml, [key, value])


def test_a_bad_value_in_yaml_names_the_file_that_set_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("TRAIN:\n  LR: -1.0e-5\n")
    child = tmp_path / "child.yaml"
    child.write_text("BASE: [base.yaml]\nTRAIN:\n  EPOCHS: 2\n")
    with pytest.raises(ConfigError, match=rf"TRAIN.LR \(set in {base}\) must be > 0, got -1e-05; the published"):
        load_config_file(child)
    # a later layer that fixes the value wins
    assert config(child, ["TRAIN.LR", "1e-5"]).TRAIN.LR == 1e-5


def test_a_bad_count_names_its_flag(empty_yaml):
    with pytest.raises(ConfigError, match=r"TRAIN.BATCH_SIZE \(set in --batch-size\) must be at least 1"):
        config(empty_yaml, batch_size=0)


BAD_TEMPLATES = [
    ("{:s}.jpg", "':s'"),                 # a string format for an int frame number
    ("{}_{}.jpg", "found 2"),             # two fields
    ("img.jpg", "found 0"),               # no field: every frame the same file
    ("{0.real}.jpg", "field {0.real}"),   # attribute access
    ("{x[0]}.jpg", r"field {x\[0\]}"),    # index access on a named field
    ("{0[0]}.jpg", r"field {0\[0\]}"),    # index access on the number
    ("img_{.jpg", "not a format string"),  # unbalanced
    ("img_}.jpg", "not a format string"),
    ("{:{}}.jpg", "':{}'"),               # nested field in the spec
    ("{!r}.jpg", "!r"),
    ("{:.2f}.jpg", "':.2f'"),
    ("{:x}.jpg", "':x'"),
    ("{:999999999}.jpg", "':999999999'"),  # a gigabyte of padding per file name
    ("../{:05}.jpg", "inside the video's frame folder"),
    ("sub/{:05}.jpg", "inside the video's frame folder"),
]


@pytest.mark.parametrize("template,problem", BAD_TEMPLATES, ids=[t for t, _ in BAD_TEMPLATES])
def test_bad_filename_templates_are_refused_at_config_time(empty_yaml, template, problem):
    with pytest.raises(ConfigError, match=rf"DATA.FILENAME_TMPL \(set in --opts\) .*{problem}"):
        config(empty_yaml, ["DATA.FILENAME_TMPL", template])


@pytest.mark.parametrize("template", ["img_{:08}.jpg", "{:05}.jpg", "{:03}.tif", "{}.jpg", "{:05d}.png",
                                      "{0:04}.jpg", "frame_{{a}}_{:04}.jpg"])
def test_every_published_kind_of_template_is_accepted(empty_yaml, template):
    assert config(empty_yaml, ["DATA.FILENAME_TMPL", template]).DATA.FILENAME_TMPL == template


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("{}:!.[]0158dsxrf_/a"), max_size=12))
def test_a_template_either_formats_distinct_file_names_or_is_refused(template):
    problem = filename_template_problem(template)  # never raises
    if not problem:
        names = {template.format(n) for n in (0, 1, 12345)}
        assert len(names) == 3 and not any("/" in n for n in names)


def test_every_shipped_config_passes_the_rules():
    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        load_config_file(path)


def test_every_rule_names_a_real_key():
    from utils.config import get_default_config

    defaults = get_default_config()
    for key in VALUE_RULES:
        node = defaults
        for part in key.split("."):
            node = node[part]  # KeyError: a rule for a key that does not exist


@pytest.mark.parametrize("argv,message", [(["--jobs", "-1"], "--jobs: must be >= 0"),
                                          (["--seeds", "0"], "--seeds: must be >= 1"),
                                          (["--jobs", "two"], "--jobs: expected an integer")])
def test_demo_counts_are_usage_errors(argv, message, capsys):
    import demo

    with pytest.raises(SystemExit) as exc:
        demo.build_parser().parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_run_demo_refuses_a_negative_job_count_before_touching_the_disk(tmp_path):
    # a negative count never let a stage start: the demo waited forever
    from apps.demo import run_demo

    with pytest.raises(ConfigError, match="jobs must be >= 0"):
        run_demo(preset="ci", output=tmp_path / "demo", device="cpu", jobs=-1)
    assert not (tmp_path / "demo").exists()


def test_a_negative_local_rank_in_the_environment_is_refused(empty_yaml, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "-2")
    with pytest.raises(ConfigError, match="LOCAL_RANK='-2' is not an integer >= 0"):
        config(empty_yaml)
