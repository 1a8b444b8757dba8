"""The synthetic configs run as shipped on a fresh clone (no data/ folder yet), and a folder
left by a failed start takes the corrected command."""
import json
from pathlib import Path

import pytest

import main as promptmil_main
import main_advtrain
from utils.errors import ListFileError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CI = "configs/synthetic/synthetic_ci.yaml"


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A folder that looks like a fresh clone: the configs, no data/, no output/."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_ci_config_makes_its_dataset_and_trains(clone):
    assert promptmil_main.main(["-cfg", CI, "--output", "out"]) == 0
    log = (clone / "out" / "log_rank0.txt").read_text()
    assert "python -m datasets.synthetic --out data/synthetic_small --preset small" in log
    meta = json.loads((clone / "data" / "synthetic_small" / "meta.json").read_text())
    assert (meta["preset"], meta["seed"]) == ("small", 0)  # what `demo.py --preset fast` makes
    results = json.loads((clone / "out" / "results.json").read_text())
    assert results["epochs"] == 1 and 0 <= results["best"]["auc_all"] <= 1

    # stage 2a then a shorter stage 2b in the same folder: the pseudo labels do not depend on it
    best = str(clone / "out" / "checkpoints" / "best.safetensors")
    adv = "configs/synthetic/synthetic_ci_advtrain.yaml"
    assert main_advtrain.main(["-cfg", adv, "--output", "adv", "--only_test", "--pretrained", best]) == 0
    assert main_advtrain.main(["-cfg", adv, "--output", "adv", "--pretrained", best,
                               "--opts", "DATA.NUM_CLIPS", "2", "ATTACK.STEPS", "1"]) == 0
    assert json.loads((clone / "adv" / "results.json").read_text())["stage"] == "advtrain"


def test_missing_data_without_the_key_names_the_command_and_the_retry_proceeds(clone):
    opts = ["--opts", "DATA.SYNTHETIC_PRESET", ""]
    with pytest.raises(ListFileError, match=r"python -m datasets\.synthetic --out data/synthetic_small --preset small"):
        promptmil_main.main(["-cfg", CI, "--output", "out", *opts])
    assert (clone / "out" / "config.yaml").is_file()  # the failed start left its config behind ...
    # ... yet the folder holds no run: the corrected command (another config) proceeds
    assert promptmil_main.main(["-cfg", CI, "--output", "out", "--opts", "DATA.NUM_CLIPS", "2"]) == 0
    assert (clone / "out" / "checkpoints" / "best.safetensors").is_file()


def test_runner_defaults_that_are_missing_say_where_they_come_from(clone):
    """The runners' defaults: the Kinetics-400 backbone, the benchmark lists, earlier stages' checkpoints."""
    from utils.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"k400_16_8\.pth is X-CLIP ViT-B/16.*"
                                              r"github\.com/nbl97/X-CLIP_Model_Zoo/releases/download/v1\.0/k400_16_8\.pth"):
        promptmil_main.main(["-cfg", CI, "--output", "w", "--pretrained", "weights/k400_16_8.pth",
                             "--opts", "DATA.NUM_CLIPS", "2"])
    best = "output/shanghai/advtrain/checkpoints/best.safetensors"
    with pytest.raises(CheckpointError, match=r"written by the training stage run with --output output/shanghai/advtrain"):
        promptmil_main.main(["-cfg", CI, "--output", "t", "--only_test", "--pretrained", best])
    with pytest.raises(ListFileError, match=r"SHANGHAI_(train|test)\.txt.*README 'Datasets'.*python -m datasets\.make_lists"):
        promptmil_main.main(["-cfg", "configs/shanghai/shanghai_server.yaml", "--output", "s"])
