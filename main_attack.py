"""Stage 3 of FrameShield: PGD attack evaluation, clean vs adversarial frame-level AUC.

    torchrun --nproc_per_node N main_attack.py -cfg configs/shanghai/shanghai_attack.yaml \
        --output output/shanghai/attack --pretrained output/shanghai/advtrain/checkpoints/best.safetensors \
        [--opts ATTACK.EPS 1 ATTACK.STEPS 50]

Each test segment is attacked with its ground-truth label (anomalous if any of its sampled
frames is). Writes OUTPUT/results.json ({"clean": {...}, "adversarial": {...}, "attack": {...}}),
scores.npz (clean_scores and adversarial_scores) and plots/.

Stronger evaluation (docs/ROBUSTNESS.md): --attack apgd-ce|apgd-margin|square|transfer,
--restarts, --sweep-eps, --sweep-steps, --transfer-from CKPT, and --report (the full suite,
sanity checks against gradient masking, robustness.md; --report-models NAME=CKPT ... puts
several checkpoints side by side).
"""
from utils.config import build_arg_parser


def parse_args(argv=None):
    from evaluation.robustness import add_robustness_args

    parser = build_arg_parser("FrameShield stage 3: attack evaluation")
    add_robustness_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from datasets.build import build_test_loader
    from utils import dist
    from training import engine, stage as stages
    from evaluation import robustness
    from attacks.pgd import attack_settings_from_config, default_step_size

    stage = stages.setup_stage("attack", args)
    cfg = stage.cfg
    try:
        tokens = stages.text_tokens(stage)
        weights = stages.weights_to_test(stage)
        model = stages.build_model(stage, weights)
        loader = build_test_loader(cfg, dist_info=stage.dist)
        if robustness.robustness_requested(args):
            return _robustness_stage(stage, args, loader, tokens, weights)
        settings = attack_settings_from_config(cfg)
        if settings["step_size"] is None:
            settings["step_size"] = default_step_size(settings["eps"], settings["steps"]) if settings["steps"] else 0.0
        stage.logger.info(f"PGD: eps {settings['eps'] * 255:g}/255, {settings['steps']} steps of "
                          f"{settings['step_size'] * 255:g}/255, random start {settings['random_start']}, "
                          f"restarts {settings['restarts']}")
        clean_rows, adv_rows, seconds = engine.evaluate_attack(model, loader, tokens, cfg, stage.logger, settings)
        records = loader.dataset.records
        clean_scores, adv_scores = engine.rows_to_scores(clean_rows), engine.rows_to_scores(adv_rows)
        clean, clean_eval = engine.score_metrics(clean_scores, records, cfg)
        adv, adv_eval = engine.score_metrics(adv_scores, records, cfg)
        stage.logger.info("            AUC@all  AUC@ano  AP")
        for name, m in (("clean", clean), ("adversarial", adv)):
            stage.logger.info(f"{name:<11} {m['auc_all']:.4f}   {m['auc_ano']:.4f}   {m['ap']:.4f}")
        stages.write_scores(stage, {"clean": clean_scores, "adversarial": adv_scores},
                            {"clean": clean_eval, "adversarial": adv_eval})
        plot_paths = stages.write_plots(stage, {"clean": clean_eval, "adversarial": adv_eval},
                                        title=f"PGD eps {settings['eps'] * 255:g}/255, {settings['steps']} steps")
        attack = {**settings, "eps_255": settings["eps"] * 255, "step_size_255": settings["step_size"] * 255,
                  "batch_size": cfg.ATTACK.BATCH_SIZE, "norm": "linf", "labels": "ground truth per segment"}
        num_segments = sum(len(v["scores"]) for v in clean_scores.values())
        stages.write_results(stage, {
            "clean": _three(clean), "adversarial": _three(adv), "attack": attack, "checkpoint": weights,
            "timings": {"attack_s": round(seconds, 3)}, "segments": num_segments,
            "segments_per_s": num_segments / max(seconds, 1e-9), "plots": [str(p) for p in plot_paths]})
        return 0
    finally:
        dist.cleanup()


def _robustness_stage(stage, args, loader, tokens, weights):
    """The --attack/--sweep-*/--report path: every setting on one pass per model."""
    import time

    from evaluation import robustness
    from training import stage as stages

    start = time.perf_counter()
    results = robustness.run_robustness(stage, args, loader, tokens, lambda w: stages.build_model(stage, w),
                                        weights=weights)
    summary = robustness.summarize(results)
    first = next(iter(summary.values()))
    stages.write_results(stage, {
        "clean": _three(first["clean"]), "adversarial": _three(first["main"]),
        "attack": first["settings"], "checkpoint": weights,
        "timings": {"robustness_s": round(time.perf_counter() - start, 3)},
        "segments_per_s": first.get("segments_per_s"), "robustness": summary})
    return 0


def _three(metrics):
    return {k: metrics[k] for k in ("auc_all", "auc_ano", "ap")}


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
