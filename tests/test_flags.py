"""Each stage script's --help lists the flags that script reads, and only those."""
import re

import pytest

import gradcam
import main as promptmil_main
import main_advtrain
import main_attack
from utils.config import get_config
from utils.flags import build_arg_parser

COMMON = {"-cfg", "--opts", "--output", "--pretrained", "--local-rank", "--overwrite"}
TRAINING = {"--batch-size", "--accumulation-steps", "--w-smooth", "--w-sparse"}


def help_flags(entry, capsys):
    with pytest.raises(SystemExit) as done:
        entry.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    return set(re.findall(r"(?m)^  (-[-\w]+)", text)) - {"-h"}


@pytest.mark.parametrize("entry,expected", [
    (promptmil_main, COMMON | TRAINING | {"--resume", "--only_test"}),
    (main_advtrain, COMMON | TRAINING | {"--resume", "--only_test"}),
    (main_attack, COMMON | {"--resume"}),
    (gradcam, COMMON),
])
def test_help_lists_what_the_script_reads(entry, expected, capsys):
    flags = help_flags(entry, capsys)
    if entry is main_attack:  # plus its robustness flags, minus everything of training
        assert expected <= flags and not flags & (TRAINING | {"--only_test"})
        assert {"--attack", "--report", "--sweep-eps"} <= flags
    else:
        assert flags == expected


def test_flags_a_script_does_not_read_are_refused(capsys):
    with pytest.raises(SystemExit) as done:
        main_attack.parse_args(["-cfg", "x.yaml", "--w-smooth", "0.1"])
    assert done.value.code == 2 and "--w-smooth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gradcam.main(["-cfg", "x.yaml", "--only_test"])


def test_published_attack_command_flags_are_accepted_and_ignored():
    """The published README runs main_attack.py with --batch-size 1 --accumulation-steps 8."""
    args = main_attack.parse_args(["-cfg", "configs/synthetic/synthetic_ci_attack.yaml", "--batch-size", "1",
                                   "--accumulation-steps", "8"])
    assert args.ignored_flags == ["--batch-size", "--accumulation-steps"]
    cfg = get_config(args)
    assert cfg.TRAIN.BATCH_SIZE == 2 and cfg.TRAIN.ACCUMULATION_STEPS == 2  # the YAML's, untouched


def test_unknown_group_is_a_programming_error():
    with pytest.raises(ValueError, match="flag groups"):
        build_arg_parser("x", groups=("trainig",))
