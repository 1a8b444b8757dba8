"""The quick-start demo end to end (reduced: 12/8 synthetic videos, one epoch per stage).

One module-scoped run of ``bash runners/demo.sh --preset ci`` on the CPU feeds the tests:
summary files with finite numbers for every model, plots, per-stage outputs; a second run
of the same command reuses every finished stage (resume) and rewrites the same table.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apps import demo_stages, demo_summary  # noqa: E402


def _run_demo(output, data):
    env = {**os.environ, "OUTPUT": str(output), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "runners" / "demo.sh"), "--preset", "ci", "--data", str(data),
                           "--device", "cpu", "--jobs", "2", "--quiet"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    output, data = root / "out", root / "data"
    proc = _run_demo(output, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return output, data, proc


def test_summary_files_hold_finite_numbers_for_every_model(demo_run):
    output, _, proc = demo_run
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary["models"]) == set(demo_stages.MODELS)
    for model, stats in summary["models"].items():
        for kind, metric in demo_stages.METRICS:
            value = stats[f"{kind}_{metric}"]["mean"]
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (model, kind, metric, value)
    assert summary["attack"]["steps"] == 2 and summary["attack"]["eps_255"] > 0
    assert set(summary["claims"]) and all(isinstance(c["holds"], bool) for c in summary["claims"].values())
    table = (output / "summary.md").read_text()
    for title, _ in demo_stages.MODELS.values():
        assert title in table
    assert "PromptMIL (clean training)" in proc.stdout  # the table is printed too
    for name in ("roc.png", "scores.png", "srd_example.png"):
        assert (output / "plots" / name).stat().st_size > 1000


def test_every_stage_wrote_its_outputs(demo_run):
    output, _, _ = demo_run
    seed = output / "seed0"
    for model in demo_stages.MODELS:
        assert (seed / model / "checkpoints" / "best.safetensors").is_file()
        attack = json.loads((seed / f"attack_{model}" / "results.json").read_text())
        assert attack["checkpoint"].endswith(f"seed0/{model}/checkpoints/best.safetensors")
    assert (seed / "pseudo_labels" / "pseudo_labels.json").is_file()
    # the ablations really switch the parts off
    srd_only = (seed / "srd_only" / "config.yaml").read_text()
    assert "PSEUDO_LABEL: false" in srd_only and "PSEUDO_ANOMALY: true" in srd_only
    pl_only = (seed / "pl_only" / "config.yaml").read_text()
    assert "PSEUDO_LABEL: true" in pl_only and "PSEUDO_ANOMALY: false" in pl_only


def test_second_run_reuses_every_stage(demo_run):
    output, data, _ = demo_run
    before = json.loads((output / "summary.json").read_text())
    state = json.loads((output / "demo_state.json").read_text())["stages"]
    assert len(state) == 1 + 1 + 3 + 4  # baseline, pseudo labels, 3 adversarial trainings, 4 attacks
    proc = _run_demo(output, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done before, reused") == len(state)
    assert "started" not in proc.stdout
    after = json.loads((output / "summary.json").read_text())
    assert after["models"] == before["models"]


def test_pseudo_label_agreement_counts_segments(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"videos": {
        "a": {"label": 1, "interval": [10, 20]}, "b": {"label": 0, "interval": None}}}))
    labels = tmp_path / "pseudo_labels.json"
    labels.write_text(json.dumps({
        "a": {"num_frames": 30, "frame_inds": [[0, 5], [10, 15], [20, 25]], "labels": [0, 0, 1]},
        "b": {"num_frames": 30, "frame_inds": [[0, 5]], "labels": [1]}}))  # normal videos are not counted
    result = demo_summary.pseudo_label_agreement(labels, tmp_path)
    assert result["segments"] == 3
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["recall"] == 0.0 and result["precision"] == 0.0


def test_progress_line_reads_the_latest_bar(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"\x1b[32m[2026 FrameShield]\x1b[0m(engine.py 1): INFO hello\n"
                    b"train 1/4:  10%|#   | 1/10\rtrain 1/4:  20%|##  | 2/10\r")
    assert demo_stages.last_progress(log).startswith("train 1/4: 20%|##")
    assert demo_stages.last_progress(tmp_path / "missing.log") == ""


def test_claims_follow_the_means():
    def stats(clean, adv):
        return {"clean_auc_all": {"mean": clean}, "adversarial_auc_all": {"mean": adv}}

    claims = demo_summary.check_claims({"baseline": stats(0.9, 0.5), "frameshield": stats(0.88, 0.75)})
    assert [c["holds"] for c in claims.values()] == [True, True, True, True]
    claims = demo_summary.check_claims({"baseline": stats(0.79, 0.6), "frameshield": stats(0.7, 0.65)})
    assert [c["holds"] for c in claims.values()] == [False, False, False, False]
    assert np.isclose(claims["PGD drops baseline AUC@all by >= 0.30"]["value"], 0.19)


def test_summary_markdown_lists_every_seed():
    models, per_seed = {}, {}
    for seed, (clean, adv) in enumerate([(0.9, 0.4), (0.8, 0.3)]):
        per_seed[str(seed)] = {m: {"clean_auc_all": clean - i / 100, "adversarial_auc_all": adv}
                               for i, m in enumerate(demo_stages.MODELS)}
    for m, (title, _) in demo_stages.MODELS.items():
        models[m] = {"title": title, **{f"{k}_{n}": {"mean": 0.5, "std": 0.1} for k, n in demo_stages.METRICS}}
    summary = {"models": models, "per_seed": per_seed, "claims": {},
               "attack": {"eps_255": 2.0, "steps": 10, "step_size_255": 0.5}}
    text = demo_summary.summary_markdown(summary, [0, 1], {"preset": "default", "wall_s": 1.0, "device": "cpu", "jobs": 1})
    assert "| seed 0 | seed 1 |" in text
    assert f"| {demo_stages.MODELS['frameshield'][0]} | 0.890 -> 0.400 | 0.790 -> 0.300 |" in text
    one = demo_summary.summary_markdown(summary, [0], {"preset": "default", "wall_s": 1.0, "device": "cpu", "jobs": 1})
    assert "Per seed" not in one
    resumed = demo_summary.summary_markdown(summary, [0], {"preset": "default", "wall_s": 3.0, "device": "cpu", "jobs": 1,
                                                   "run_now": ["seed0/x"], "reused": ["seed0/baseline"]})
    assert "1 stage(s) were reused" in resumed and "reused" not in one


def test_presets_default_to_their_own_output_folders():
    assert demo_stages.default_output("default") == "output/demo"
    folders = {demo_stages.default_output(p) for p in demo_stages.DEMO_PRESETS}
    assert len(folders) == len(demo_stages.DEMO_PRESETS)


def test_summary_links_each_models_training_curves(tmp_path):
    for model in ("baseline", "frameshield"):
        (tmp_path / "seed0" / model / "plots").mkdir(parents=True)
        (tmp_path / "seed0" / model / "plots" / "training.png").write_bytes(b"png")
        (tmp_path / "seed0" / model / "metrics.csv").write_text("kind,step,epoch,time\n")
    curves = demo_summary.training_curves(tmp_path, [0])
    assert set(curves) == {"baseline", "frameshield"}
    assert curves["baseline"]["0"] == {"plot": "seed0/baseline/plots/training.png", "csv": "seed0/baseline/metrics.csv"}
    models = {m: {"title": title, **{f"{k}_{n}": {"mean": 0.5, "std": 0.0} for k, n in demo_stages.METRICS}}
              for m, (title, _) in demo_stages.MODELS.items()}
    summary = {"models": models, "per_seed": {"0": {}}, "claims": {}, "curves": curves,
               "attack": {"eps_255": 2.0, "steps": 10, "step_size_255": 0.5}}
    text = demo_summary.summary_markdown(summary, [0], {"preset": "default", "wall_s": 1.0, "device": "cpu", "jobs": 1})
    assert (f"- {demo_stages.MODELS['frameshield'][0]}: [seed 0](seed0/frameshield/plots/training.png) "
            "([csv](seed0/frameshield/metrics.csv))") in text
