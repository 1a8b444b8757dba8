"""Config tree: defaults, BASE inheritance, key/type errors, --opts, flags, LOCAL_RANK, YAML round trip."""
import types
from pathlib import Path

import pytest

from utils.config import (
    build_arg_parser,
    get_config,
    get_default_config,
    load_config_file,
    merge_opts,
    save_config,
)
from utils.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return path


def parse(argv):
    return build_arg_parser("test").parse_args(argv)


@pytest.fixture(autouse=True)
def no_local_rank_env(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def empty_yaml(tmp_path):
    return write(tmp_path / "empty.yaml", "")


def test_defaults_match_contract(empty_yaml):
    cfg = get_config(parse(["-cfg", str(empty_yaml)]))
    assert cfg.is_frozen()
    assert cfg.DATA.INPUT_SIZE == 224 and cfg.DATA.NUM_CLIPS == 16 and cfg.DATA.NUM_FRAMES == 5
    assert cfg.DATA.FRAME_INTERVAL == 6 and cfg.DATA.FILENAME_TMPL == "img_{:08}.jpg"
    assert cfg.DATA.LABEL_LIST == "configs/labels_2.csv" and cfg.DATA.COUNT_START_ZERO is False
    assert cfg.MODEL.ARCH == "ViT-B/32" and cfg.MODEL.PRETRAINED is None and cfg.MODEL.RESUME is None
    assert cfg.TRAIN.LR == 8e-6 and cfg.TRAIN.EPOCHS == 40 and cfg.TRAIN.AMP == "none"
    assert cfg.TRAIN.W_SMOOTH == 0.01 and cfg.TRAIN.W_SPARSE == 0.001
    assert cfg.ADV_TRAIN.EPS == 2.0 and cfg.ADV_TRAIN.LOSS == "mil" and cfg.ADV_TRAIN.CLEAN_WEIGHT == 0.0
    assert cfg.ATTACK.EPS == -1.0 and cfg.ATTACK.STEPS == 10
    assert cfg.AUG.COLOR_JITTER == 0.8 and cfg.TEST.SMOOTH is True
    assert cfg.ROBUSTNESS.ATTACK == "pgd" and cfg.ROBUSTNESS.SQUARE_P_INIT == 0.8
    assert (cfg.OUTPUT, cfg.SAVE_FREQ, cfg.PRINT_FREQ, cfg.SEED, cfg.LOCAL_RANK) == ("", 1, 10, 1024, -1)


@pytest.mark.parametrize("key", ["DATA.DATASET", "TEST.NUM_CLIP", "AUG.MIXUP", "AUG.CUTMIX", "AUG.LABEL_SMOOTH",
                                 "AUG.MIXUP_SWITCH_PROB"])
def test_removed_keys_say_they_were_removed(tmp_path, key):
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: 1\n")
    with pytest.raises(ConfigError, match=f"{key} in .* was removed .*delete the line"):
        load_config_file(path)
    with pytest.raises(ConfigError, match=f"{key} in --opts was removed"):
        cfg = get_default_config()
        merge_opts(cfg, [key, "1"])


def test_robustness_keys_are_validated(tmp_path):
    for text, match in (("ROBUSTNESS:\n  SQUARE_P_INIT: 0.0\n", "SQUARE_P_INIT"),
                        ("ROBUSTNESS:\n  ATTACK: fgsm\n", "ROBUSTNESS.ATTACK must be one of"),
                        ("ROBUSTNESS:\n  RESTARTS: -2\n", "ROBUSTNESS.RESTARTS")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config_file(path)


def test_config_flag_is_required():
    with pytest.raises(SystemExit):
        parse([])
    with pytest.raises(ConfigError, match="-cfg"):
        get_config(types.SimpleNamespace(config=None))


def test_base_inheritance_is_recursive_and_relative(tmp_path):
    (tmp_path / "bases").mkdir()
    write(tmp_path / "bases" / "root.yaml", "DATA:\n  ROOT: root_dir\n  NUM_FRAMES: 8\nTRAIN:\n  EPOCHS: 3\n")
    write(tmp_path / "bases" / "mid.yaml", "BASE: ['root.yaml']\nDATA:\n  NUM_FRAMES: 4\n")
    top = write(tmp_path / "top.yaml", "BASE: ['bases/mid.yaml']\nTRAIN:\n  LR: 1e-4\n")
    cfg = load_config_file(top)
    assert cfg.DATA.ROOT == "root_dir"  # from the grand-parent
    assert cfg.DATA.NUM_FRAMES == 4  # the child overrides its base
    assert cfg.TRAIN.EPOCHS == 3 and cfg.TRAIN.LR == pytest.approx(1e-4)


def test_base_empty_string_means_no_base(tmp_path):
    cfg = load_config_file(write(tmp_path / "a.yaml", "BASE: ['']\nSEED: 3\n"))
    assert cfg.SEED == 3


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "BASE: ['b.yaml']\n")
    write(tmp_path / "b.yaml", "BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config_file(tmp_path / "a.yaml")


def test_missing_base_names_including_file(tmp_path):
    path = write(tmp_path / "a.yaml", "BASE: ['nope.yaml']\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml.*a\.yaml"):
        load_config_file(path)


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    write(tmp_path / "base.yaml", "TRAIN:\n  EPOCS: 3\n")
    top = write(tmp_path / "top.yaml", "BASE: [base.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(top)
    message = str(err.value)
    assert "TRAIN.EPOCS" in message and "base.yaml" in message and "TRAIN.EPOCHS" in message


def test_lower_case_key_hint(tmp_path):
    with pytest.raises(ConfigError, match="did you mean TRAIN.LR"):
        load_config_file(write(tmp_path / "a.yaml", "TRAIN:\n  lr: 1e-5\n"))


def test_unknown_section_and_section_given_a_value(tmp_path):
    with pytest.raises(ConfigError, match="MODELL"):
        load_config_file(write(tmp_path / "a.yaml", "MODELL:\n  ARCH: x\n"))
    with pytest.raises(ConfigError, match="DATA.*section"):
        load_config_file(write(tmp_path / "b.yaml", "DATA: 5\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("TRAIN:\n  EPOCHS: many\n", "TRAIN.EPOCHS"),
        ("TRAIN:\n  EPOCHS: 2.5\n", "TRAIN.EPOCHS"),
        ("TRAIN:\n  LR: fast\n", "TRAIN.LR"),
        ("TRAIN:\n  AUTO_RESUME: 1\n", "TRAIN.AUTO_RESUME"),
        ("DATA:\n  ROOT: 12\n", "DATA.ROOT"),
        ("TRAIN:\n  AMP: fp16\n", "TRAIN.AMP"),
        ("DATA:\n  NUM_FRAMES: 0\n", "DATA.NUM_FRAMES"),
        ("- a\n- b\n", "mapping"),
        ("DATA: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_values(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config_file(write(tmp_path / "a.yaml", text))


def test_yaml_number_forms_and_none_paths(tmp_path):
    path = write(
        tmp_path / "a.yaml",
        "TRAIN:\n  LR: 8e-6\n  WEIGHT_DECAY: 0\nMODEL:\n  PRETRAINED: None\n  RESUME: ckpt.pth\n",
    )
    cfg = load_config_file(path)
    assert cfg.TRAIN.LR == 8e-6 and isinstance(cfg.TRAIN.WEIGHT_DECAY, float)
    assert cfg.MODEL.PRETRAINED is None and cfg.MODEL.RESUME == "ckpt.pth"


def test_opts_override_and_types(empty_yaml):
    cfg = get_config(parse([
        "-cfg", str(empty_yaml), "--opts", "TRAIN.LR", "1e-3", "DATA.NUM_WORKERS", "0",
        "TEST.SMOOTH", "false", "MODEL.PRETRAINED", "w.pth", "ATTACK.EPS", "-1", "DATA.ROOT", "123",
    ]))
    assert cfg.TRAIN.LR == 1e-3 and cfg.DATA.NUM_WORKERS == 0 and cfg.TEST.SMOOTH is False
    assert cfg.MODEL.PRETRAINED == "w.pth" and cfg.ATTACK.EPS == -1.0 and cfg.DATA.ROOT == "123"


@pytest.mark.parametrize(
    "opts, match",
    [
        (["TRAIN.LR"], "odd number"),
        (["TRAIN.LR", "1", "SEED"], "odd number"),
        (["TRAIN.LR", "abc"], "TRAIN.LR.*--opts.*number"),
        (["TRAIN.EPOCHS", "1.5"], "TRAIN.EPOCHS.*integer"),
        (["TRAIN.LR", "nan"], "finite"),
        (["TRAIN.FOO", "1"], "TRAIN.FOO in --opts"),
        (["FOO.BAR", "1"], "FOO in --opts"),
        (["TRAIN", "1"], "section"),
        (["SEED.X", "1"], "not a section"),
        (["TEST.ONLY_TEST", "maybe"], "true/false"),
    ],
)
def test_opts_errors(empty_yaml, opts, match):
    with pytest.raises(ConfigError, match=match):
        get_config(parse(["-cfg", str(empty_yaml), "--opts", *opts]))


def test_flags_override_yaml_and_opts(tmp_path):
    path = write(tmp_path / "a.yaml", "TRAIN:\n  BATCH_SIZE: 2\n  W_SMOOTH: 0.5\nOUTPUT: from_yaml\n")
    cfg = get_config(parse([
        "-cfg", str(path), "--opts", "OUTPUT", "from_opts", "TRAIN.BATCH_SIZE", "3",
        "--output", "out", "--pretrained", "p.pth", "--resume", "r.pth", "--only_test",
        "--batch-size", "4", "--accumulation-steps", "2", "--w-sparse", "0.2",
    ]))
    assert cfg.OUTPUT == "out" and cfg.MODEL.PRETRAINED == "p.pth" and cfg.MODEL.RESUME == "r.pth"
    assert cfg.TEST.ONLY_TEST is True and cfg.TRAIN.BATCH_SIZE == 4 and cfg.TRAIN.ACCUMULATION_STEPS == 2
    assert cfg.TRAIN.W_SPARSE == 0.2
    # --w-smooth not typed: the YAML value stands (the flag's 0.01 default does not clobber it)
    assert cfg.TRAIN.W_SMOOTH == 0.5


def test_w_smooth_flag_given_explicitly_with_default_value_wins(tmp_path):
    path = write(tmp_path / "a.yaml", "TRAIN:\n  W_SMOOTH: 0.5\n")
    args = parse(["-cfg", str(path), "--w-smooth", "0.01"])
    assert get_config(args).TRAIN.W_SMOOTH == 0.01
    assert parse(["-cfg", str(path)]).w_smooth == 0.01  # scripts reading args still see the default


def test_bad_flag_values(empty_yaml):
    with pytest.raises(ConfigError, match="TRAIN.BATCH_SIZE"):
        get_config(parse(["-cfg", str(empty_yaml), "--batch-size", "0"]))
    with pytest.raises(SystemExit):
        parse(["-cfg", str(empty_yaml), "--batch-size", "x"])


def test_local_rank_flag_spellings_and_env_precedence(empty_yaml, monkeypatch):
    assert parse(["-cfg", "x", "--local_rank", "2"]).local_rank == 2
    assert parse(["-cfg", "x", "--local-rank", "3"]).local_rank == 3
    assert get_config(parse(["-cfg", str(empty_yaml), "--local-rank", "3"])).LOCAL_RANK == 3
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert get_config(parse(["-cfg", str(empty_yaml), "--local-rank", "3"])).LOCAL_RANK == 1
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        get_config(parse(["-cfg", str(empty_yaml)]))


def test_save_config_round_trip(tmp_path, empty_yaml):
    cfg = get_config(parse([
        "-cfg", str(empty_yaml), "--opts", "TRAIN.LR", "3e-5", "DATA.ROOT", "data/x", "--resume", "r.pth",
    ]))
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert "PRETRAINED: null" in out.read_text()
    assert load_config_file(out) == cfg
    assert not [p for p in out.parent.iterdir() if p.name != "config.yaml"]  # no temporary left


def test_default_config_is_independent():
    a = get_default_config()
    a.SEED = 5
    assert get_default_config().SEED == 1024


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")))
def test_shipped_configs_load(path):
    load_config_file(path)


def test_bad_choices_rejected(tmp_path):
    with pytest.raises(ConfigError, match="SRD_SEVERITY"):
        load_config_file(write(tmp_path / "a.yaml", "ADV_TRAIN:\n  SRD_SEVERITY: extreme\n"))
    with pytest.raises(ConfigError, match="NUM_CROP"):
        load_config_file(write(tmp_path / "b.yaml", "TEST:\n  NUM_CROP: 2\n"))
