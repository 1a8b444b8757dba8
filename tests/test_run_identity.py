"""The same-run check of an output folder: only folders with results are runs, and they are
compared on the keys their results depend on (training/run_identity.py)."""
import json

import pytest

from training.run_identity import compared_keys, folder_contents
from training.stage import check_output_folder, config_differences
from utils.config import get_default_config, save_config
from utils.errors import ConfigError


def config(**changes):
    cfg = get_default_config()
    for key, value in changes.items():
        section, name = key.split("__") if "__" in key else (None, key)
        node = cfg[section] if section else cfg
        node[name] = value
    return cfg


def folder(tmp_path, cfg, *, results=None, pseudo_labels=False, checkpoints=False):
    save_config(cfg, tmp_path / "config.yaml")
    if results is not None:
        (tmp_path / "results.json").write_text(json.dumps(results))
    if pseudo_labels:
        (tmp_path / "pseudo_labels.json").write_text("{}")
    if checkpoints:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "last.safetensors").write_bytes(b"x")
    return tmp_path


def test_a_folder_without_results_is_not_a_run(tmp_path):
    """A stage that failed at its start (missing list file) left config.yaml and a log only:
    the corrected command proceeds, without --overwrite."""
    folder(tmp_path, config())
    (tmp_path / "log_rank0.txt").write_text("ListFileError: list file not found\n")
    assert folder_contents(tmp_path) == []
    assert check_output_folder(config(DATA__ROOT="elsewhere", TRAIN__EPOCHS=3), tmp_path, overwrite=False) is False


def test_pseudo_labels_folder_takes_a_shorter_training(tmp_path):
    genlabels = {"stage": "advtrain", "pseudo_labels": "x/pseudo_labels.json", "checkpoint": "b.safetensors"}
    folder(tmp_path, config(), results=genlabels, pseudo_labels=True)
    assert folder_contents(tmp_path) == ["pseudo_labels"]
    # what only training reads may change: the labels do not depend on it
    assert check_output_folder(config(TRAIN__EPOCHS=1, ADV_TRAIN__CLEAN_WEIGHT=0.5, ATTACK__STEPS=3),
                               tmp_path, overwrite=False) is True
    # what the labels were computed with may not
    for change in ({"DATA__NUM_FRAMES": 8}, {"MODEL__PRETRAINED": "other.pth"}, {"TEST__NUM_CROP": 3},
                   {"SEED": 7}):
        key = next(iter(change)).replace("__", ".")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_output_folder(config(**change), tmp_path, overwrite=False)


def test_checkpoints_compare_every_key_training_reads(tmp_path):
    folder(tmp_path, config(), checkpoints=True, pseudo_labels=True)
    with pytest.raises(ConfigError, match=r"TRAIN\.EPOCHS: 40 -> 1"):
        check_output_folder(config(TRAIN__EPOCHS=1), tmp_path, overwrite=False)
    # run-mode keys and what training never reads are not compared
    same = config(ATTACK__EPS=4.0, ROBUSTNESS__STRONG_STEPS=5, TEST__BATCH_SIZE=1, DATA__NUM_WORKERS=0,
                  TRAIN__TENSORBOARD=False, PRINT_FREQ=1)
    assert check_output_folder(same, tmp_path, overwrite=False) is True


def test_evaluation_folders_compare_what_scoring_reads(tmp_path):
    folder(tmp_path / "test", config(), results={"stage": "promptmil", "test": {"auc_all": 0.5}})
    assert check_output_folder(config(TRAIN__LR=1.0, ATTACK__STEPS=50), tmp_path / "test", overwrite=False) is True
    with pytest.raises(ConfigError, match=r"TEST\.SMOOTH"):
        check_output_folder(config(TEST__SMOOTH=False), tmp_path / "test", overwrite=False)
    folder(tmp_path / "attack", config(), results={"stage": "attack", "clean": {}, "adversarial": {}})
    assert check_output_folder(config(TRAIN__EPOCHS=2), tmp_path / "attack", overwrite=False) is True
    for change, key in (({"ATTACK__STEPS": 50}, "ATTACK.STEPS"), ({"ADV_TRAIN__EPS": 0.5}, "ADV_TRAIN.EPS")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_output_folder(config(**change), tmp_path / "attack", overwrite=False)


def test_unknown_results_compare_everything(tmp_path):
    folder(tmp_path, config(), results={})
    with pytest.raises(ConfigError, match=r"TRAIN\.LR"):
        check_output_folder(config(TRAIN__LR=1.0), tmp_path, overwrite=False)
    assert compared_keys(["unknown"], ["TRAIN.LR", "OUTPUT"]) == {"TRAIN.LR"}


def test_a_key_missing_from_an_older_config_counts_as_its_default(tmp_path):
    text = (tmp_path / "config.yaml")
    save_config(config(), text)
    older = text.read_text().replace("  TENSORBOARD: true\n", "").replace("  SYNTHETIC_PRESET: ''\n", "")
    assert "TENSORBOARD" not in older and "SYNTHETIC_PRESET" not in older
    text.write_text(older)
    assert config_differences(config(), text, keys=["TRAIN.TENSORBOARD", "DATA.SYNTHETIC_PRESET"]) == []
    assert config_differences(config(DATA__SYNTHETIC_PRESET="small"), text,
                              keys=["DATA.SYNTHETIC_PRESET"]) == ["DATA.SYNTHETIC_PRESET: '' -> 'small'"]


def test_training_clip_keys_do_not_change_scores(tmp_path):
    folder(tmp_path, config(), results={"stage": "attack"})
    assert check_output_folder(config(DATA__NUM_CLIPS=2, DATA__NUM_VIEWS=1), tmp_path, overwrite=False) is True
