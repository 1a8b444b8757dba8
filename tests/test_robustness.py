"""Robustness evaluation: APGD vs PGD-10 and a monotone eps sweep on the tiny X-CLIP trained
briefly on the small synthetic preset, sanity checks on a gradient-masked toy model, the
loader driver, flags, planning and the report files."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from attacks.common import make_forward, margin_objective
from attacks.registry import AttackSetting, run_attack
from evaluation import robustness as rb
from evaluation.report import write_robustness_report
from evaluation.sanity import input_gradient_stats, sanity_checks
from evaluation.scoring import loader_batches, records_metrics_fn, score_batches
from tests.cfg_helpers import tiny_synthetic_cfg
from utils.config import apply_flags, build_arg_parser
from utils.errors import ConfigError


# ----------------------------------------------------------------------------- fixtures
make_cfg = tiny_synthetic_cfg


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The small synthetic test set (41 segments of 2 frames) and a tiny X-CLIP trained on it
    for ~3 s (segment cross-entropy; it only has to be a non-trivial detector)."""
    from clip import tokenize
    from datasets.build import build_test_loader
    from datasets.synthetic import make_synthetic_dataset
    from models import xclip

    paths = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), preset="small")
    cfg = make_cfg(paths)
    loader = build_test_loader(cfg)
    batches = list(loader_batches(loader, loader.dataset.records))
    videos = torch.cat([b[1] for b in batches])
    labels = torch.cat([b[2] for b in batches])
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2)
    tokens = tokenize(["normal", "abnormal"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    draw = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(0, len(videos), (16,), generator=draw)
        loss = nn.functional.cross_entropy(model(videos[idx], tokens)["y"], labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    metrics_fn = records_metrics_fn(loader.dataset.records)
    return SimpleNamespace(paths=paths, cfg=cfg, loader=loader, batches=batches, videos=videos, labels=labels,
                           model=model, tokens=tokens, metrics_fn=metrics_fn)


def parse(cfg, *flags):
    """``cfg`` with main_attack.py's robustness flags applied, as get_config applies them."""
    parser = rb.add_robustness_args(build_arg_parser("test"))
    args = parser.parse_args(["-cfg", "unused.yaml", *flags])
    out = cfg.clone()
    out.defrost()
    apply_flags(out, args, args.config_flags)
    out.freeze()
    return out


# ----------------------------------------------------------------------------- the tiny trained model
def test_segment_labels_follow_the_sampled_frames(demo):
    from datasets.lists import frame_labels

    records = demo.loader.dataset.records
    for batch in demo.loader:
        _, _, labels = next(loader_batches([batch], records))
        for i, vid in enumerate(batch["vid"].tolist()):
            truth = frame_labels(records[vid])
            assert labels[i] == int(truth[batch["frame_inds"][i].numpy()].any())
    assert 0 < int(demo.labels.sum()) < len(demo.labels)


def test_apgd_at_least_as_strong_as_pgd10(demo):
    eps = 8 / 255
    settings = [AttackSetting("pgd", eps, 10), AttackSetting("apgd-ce", eps, 10),
                AttackSetting("apgd-margin", eps, 10)]
    result = score_batches(demo.model, demo.batches, demo.tokens, settings)
    clean, rows = rb.metrics_of_settings(result, settings, demo.metrics_fn)
    pgd_row = rows[0]
    assert clean["auc_all"] > 0.6  # the detector works before the attack
    assert pgd_row["auc_all"] < clean["auc_all"]
    forward = make_forward(demo.model, demo.tokens)
    for row in rows[1:]:
        assert row["auc_all"] <= pgd_row["auc_all"] + 1e-9, row["key"]
        if row["auc_all"] == pgd_row["auc_all"]:  # a tie in AUC: compare the objective
            adv_pgd = run_attack("pgd", demo.model, demo.videos, demo.tokens, demo.labels, eps, 10)
            adv = run_attack(row["attack"], demo.model, demo.videos, demo.tokens, demo.labels, eps, 10)
            with torch.no_grad():
                ours = margin_objective(forward(adv), demo.labels).sum()
                theirs = margin_objective(forward(adv_pgd), demo.labels).sum()
            assert ours >= theirs - 1e-4


def test_eps_sweep_is_monotone(demo):
    curve = rb.sweep_eps(demo.model, demo.batches, demo.tokens, "pgd", [0, 0.5 / 255, 2 / 255, 8 / 255], 5,
                         demo.metrics_fn)
    assert curve["eps_255"] == pytest.approx([0, 0.5, 2, 8])
    for key in ("auc_all", "auc_ano"):
        values = curve[key]
        assert all(b <= a + 0.02 for a, b in zip(values, values[1:])), (key, values)
    assert curve["auc_all"][-1] < curve["auc_all"][0] - 0.2


# ----------------------------------------------------------------------------- sanity checks on toy models
class LinearScorer(nn.Module):
    """logit margin = 40 * mean(w * (x - 0.5)) with a fixed +-1 pattern w; ``quantise``
    rounds the input to 5 levels first, which zeroes every input gradient (masking)."""

    def __init__(self, quantise):
        super().__init__()
        draw = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.where(torch.rand(2, 3, 8, 8, generator=draw) < 0.5, -1.0, 1.0))
        self.quantise = quantise

    def forward(self, video, text_tokens):
        x = torch.round(video * 4) / 4 if self.quantise else video
        z = 40 * ((x - 0.5) * self.w).mean(dim=(1, 2, 3, 4))
        return {"y": torch.stack([-z / 2, z / 2], dim=1)}


def clip_metrics(labels):
    labels = labels.numpy()

    def metrics(scores):
        s = np.array([scores[i] for i in range(len(labels))])
        auc = float(roc_auc_score(labels, s))
        return {"auc_all": auc, "auc_ano": auc, "ap": float(average_precision_score(labels, s))}
    return metrics


def toy_checks(quantise):
    model = LinearScorer(quantise)
    videos = torch.rand(24, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(videos, None)["y"][:, 1]
    labels = (clean > clean.median()).long()  # clean AUC = 1
    settings = [AttackSetting("pgd", 4 / 255, 10), AttackSetting("pgd", 16 / 255, 10),
                AttackSetting("pgd", 16 / 255, 20), AttackSetting("square", 16 / 255, 150, 1, True)]
    result = score_batches(model, [(list(range(24)), videos, labels)], None, settings,
                               generator=torch.Generator().manual_seed(0))
    clean_row, rows = rb.metrics_of_settings(result, settings, clip_metrics(labels))
    gradients = input_gradient_stats(model, videos, None, labels)
    return {c["check"]: c["passed"] for c in sanity_checks(clean_row, rows, gradients)}, clean_row, rows


def test_sanity_checks_pass_on_a_healthy_model():
    checks, clean, rows = toy_checks(quantise=False)
    assert clean["auc_all"] == 1.0
    assert checks == {"monotone-eps": True, "monotone-steps": True, "large-eps-chance": True,
                      "gradient-free-weaker": True, "input-gradients": True}


def test_sanity_checks_fire_on_a_gradient_masked_model(caplog):
    with caplog.at_level("WARNING"):
        checks, clean, rows = toy_checks(quantise=True)
    by_key = {r["key"]: r for r in rows}
    assert by_key["pgd(eps=16/255,steps=10,R=1)"]["auc_all"] == 1.0  # PGD sees no gradient
    assert checks["input-gradients"] is False
    assert checks["large-eps-chance"] is False
    assert checks["gradient-free-weaker"] is False  # Square finds what PGD cannot
    assert "gradient masking" in caplog.text


def test_monotonicity_check_flags_a_rising_curve():
    clean = {"attack": "none", "eps": 0.0, "eps_255": 0.0, "steps": 0, "restarts": 1, "key": "clean",
             "auc_all": 0.8, "auc_ano": 0.7, "ap": 0.5}
    rows = [{"attack": "pgd", "eps": e / 255, "eps_255": e, "steps": 10, "restarts": 1, "key": f"pgd{e}",
             "auc_all": a, "auc_ano": 0.5, "ap": 0.3} for e, a in ((1, 0.6), (2, 0.7))]
    checks = sanity_checks(clean, rows)
    assert [c["passed"] for c in checks if c["check"] == "monotone-eps"] == [False]
    assert next(c for c in checks if c["check"] == "large-eps-chance")["passed"] is None


# ----------------------------------------------------------------------------- flags, planning, driver, report
def test_plan_settings_from_flags(demo):
    settings, plan = rb.plan_settings(parse(demo.cfg, "--report", "--strong-steps", "7", "--square-queries", "9"))
    keys = [s.key for s in settings]
    assert len(keys) == len(set(keys))
    assert plan["main"] == "pgd(eps=2/255,steps=10,R=1)"  # ADV_TRAIN.EPS 2 when ATTACK.EPS < 0
    assert {"apgd-ce", "apgd-margin", "square"} <= {s.attack for s in settings}
    assert any(s.attack == "pgd" and s.steps == 7 for s in settings)
    assert any(s.attack == "square" and s.steps == 9 for s in settings)
    assert plan["sweep_eps"]["eps"] == pytest.approx([e / 255 for e in rb.DEFAULT_SWEEP_EPS])
    assert plan["sweep_steps"]["steps"] == list(rb.DEFAULT_SWEEP_STEPS)
    _, plan = rb.plan_settings(parse(demo.cfg, "--sweep-eps", "1", "0", "4", "--sweep-attack", "apgd-ce"))
    assert plan["sweep_eps"]["eps"] == pytest.approx([0, 1 / 255, 4 / 255]) and plan["sweep_attack"] == "apgd-ce"
    assert "sweep_steps" not in plan
    with pytest.raises(ConfigError, match="transfer-from"):
        rb.plan_settings(parse(demo.cfg, "--attack", "transfer"))
    with pytest.raises(ConfigError, match="ROBUSTNESS.RESTARTS"):
        rb.plan_settings(parse(demo.cfg, "--restarts", "-1"))
    settings, plan = rb.plan_settings(parse(demo.cfg, "--report", "--restarts", "3", "--sweep-eps", "1", "2"))
    assert {s.restarts for s in settings if s.attack == "pgd" and s.eps < 2 / 255} == {3}  # sweep rows
    assert any(s.attack == "pgd" and s.restarts == 1 and s.steps == 10 for s in settings)  # the published one
    settings, _ = rb.plan_settings(parse(demo.cfg, "--sweep-attack", "square", "--sweep-steps", "5", "50"))
    assert sorted(s.steps for s in settings if s.attack == "square") == [5, 50]
    assert not rb.robustness_requested(parse(demo.cfg))
    swept = parse(demo.cfg, "--sweep-steps")
    assert rb.robustness_requested(swept) and list(swept.ROBUSTNESS.SWEEP_STEPS) == list(rb.DEFAULT_SWEEP_STEPS)
    square = [s for s in rb.plan_settings(parse(demo.cfg, "--report", "--square-p-init", "0.3"))[0]
              if s.attack == "square"]
    assert square[0].p_init == 0.3 and "p=0.3" in square[0].key
    assert [s for s in rb.plan_settings(parse(demo.cfg, "--report"))[0] if s.attack == "square"][0].p_init == 0.8


def test_parse_report_models():
    assert rb.parse_report_models(["base=a/b.safetensors", "c/fs.safetensors"]) == [
        ("base", "a/b.safetensors"), ("fs", "c/fs.safetensors")]
    assert rb.parse_report_models(None, default=("m", None)) == [("m", None)]
    with pytest.raises(ConfigError):
        rb.parse_report_models(["x=a", "x=b"])
    with pytest.raises(ConfigError):
        rb.parse_report_models(["x="])


def test_evaluate_robustness_and_report(demo, tmp_path):
    cfg = make_cfg(demo.paths, **{"ATTACK.STEPS": 2, "ATTACK.EPS": 4.0})
    cfg = parse(cfg, "--attack", "apgd-ce", "--report", "--strong-steps", "2", "--square-queries", "5",
                "--sweep-eps", "0", "1", "4", "--sweep-steps", "1", "2")
    result = rb.evaluate_robustness(demo.model, demo.loader, demo.tokens, cfg)
    assert result["segments"] == len(demo.videos) and result["segments_per_s"] > 0
    assert result["main"]["attack"] == "apgd-ce" and result["main"]["eps_255"] == pytest.approx(4)
    assert result["sweeps"]["eps"]["eps_255"] == pytest.approx([0, 1, 4])
    assert result["sweeps"]["steps"]["steps"] == [1, 2]
    assert all(math.isfinite(r["auc_all"]) for r in result["rows"])
    assert {c["check"] for c in result["sanity"]} >= {"monotone-eps", "monotone-steps", "large-eps-chance",
                                                       "gradient-free-weaker", "input-gradients"}
    assert result["gradients"]["zero_clips"] == 0
    assert set(result["videos"]["adversarial"]) == {r.path for r in demo.loader.dataset.records}
    paths = write_robustness_report(tmp_path, {"baseline": result, "frameshield": result})
    report = (tmp_path / "robustness.md").read_text()
    assert "baseline AUC@all" in report and "frameshield AUC@all" in report and "## Sanity checks" in report
    assert "plots/robustness_eps.png" in report
    for name in ("plots/robustness_eps.png", "plots/robustness_steps.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    import json
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["baseline"]["main"]["key"] == result["main"]["key"] and "videos" not in saved["baseline"]
    assert len(paths) == 4


def test_run_robustness_with_models_and_transfer(demo, tmp_path):
    cfg = parse(make_cfg(demo.paths, **{"ATTACK.STEPS": 1}), "--attack", "transfer", "--transfer-from",
                "src.safetensors", "--report-models", "base=b.safetensors", "fs=f.safetensors")
    stage = SimpleNamespace(cfg=cfg, logger=rb.logger, output=tmp_path, is_main=True)
    built = []

    def build_model(path):
        built.append(path)
        return demo.model

    results = rb.run_robustness(stage, demo.loader, demo.tokens, build_model, weights="w.safetensors")
    assert built == ["src.safetensors", "b.safetensors", "f.safetensors"]
    assert list(results) == ["base", "fs"] and results["fs"]["checkpoint"] == "f.safetensors"
    # crafted on the same weights, the transfer attack is the white-box PGD
    assert results["base"]["main"]["auc_all"] < results["base"]["clean"]["auc_all"]
    assert (tmp_path / "robustness.json").is_file() and not (tmp_path / "robustness.md").exists()
