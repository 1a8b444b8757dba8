"""The GPU check's pipeline part runs the demo's stage-1 config end to end (here on the CPU,
one epoch, fp32): the script a lent GPU gets must not fail on a config key it does not set."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402
from datasets.synthetic import make_synthetic_dataset  # noqa: E402


def test_pipeline_check_trains_the_demo_config_on_its_own_data(tmp_path):
    data = make_synthetic_dataset(tmp_path / "synthetic", preset="small", seed=0)
    rows = gpu_check.pipeline_check(data, tmp_path / "out", epochs=1, amps=("none",))
    assert 0.0 <= rows["none"]["auc_all"] <= 1.0
    assert "auc_gap" not in rows  # one precision: no gap to report
    config = (tmp_path / "out" / "pipeline_none" / "config.yaml").read_text()
    assert str(data["val_list"]) in config and str(data["train_fit_list"]) in config  # its own split, not data/
