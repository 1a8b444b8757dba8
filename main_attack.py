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
from utils.flags import warn_ignored


def parse_args(argv=None):
    from evaluation.robustness import add_robustness_args

    # reads no training flag; the published commands' --batch-size/--accumulation-steps are accepted, ignored
    parser = build_arg_parser("FrameShield stage 3: attack evaluation", groups=("resume",),
                              compat=("--batch-size", "--accumulation-steps"))
    add_robustness_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from attacks.registry import AttackSetting
    from attacks.settings import attack_settings, describe
    from datasets.build import build_test_loader
    from evaluation import robustness
    from evaluation.scoring import score_loader, score_metrics, scores_by_video
    from training import stage as stages
    from training.scalars import log_evaluation
    from utils import dist

    stage = stages.setup_stage("attack", args)
    warn_ignored(args, "main_attack.py", stage.logger)
    cfg = stage.cfg
    try:
        tokens = stages.text_tokens(stage)
        weights = stages.weights_to_test(stage)
        model = stages.build_model(stage, weights)
        loader = build_test_loader(cfg, dist_info=stage.dist)
        if robustness.robustness_requested(cfg):
            return _robustness_stage(stage, loader, tokens, weights)
        settings = attack_settings(cfg)
        stage.logger.info(describe(settings))
        setting = AttackSetting("pgd", settings["eps"], settings["steps"], settings["restarts"],
                                settings["random_start"], settings["step_size"])
        result = score_loader(model, loader, tokens, cfg, [setting], desc="attack")
        records = loader.dataset.records
        clean_scores = scores_by_video(result["clean"])
        adv_scores = scores_by_video(result["adversarial"][setting.key])
        clean, clean_eval = score_metrics(clean_scores, records, cfg)
        adv, adv_eval = score_metrics(adv_scores, records, cfg)
        stage.logger.info("            AUC@all  AUC@ano  AP")
        for name, m in (("clean", clean), ("adversarial", adv)):
            stage.logger.info(f"{name:<11} {m['auc_all']:.4f}   {m['auc_ano']:.4f}   {m['ap']:.4f}")
        stages.write_scores(stage, {"clean": clean_scores, "adversarial": adv_scores},
                            {"clean": clean_eval, "adversarial": adv_eval})
        plot_paths = stages.write_plots(stage, {"clean": clean_eval, "adversarial": adv_eval},
                                        title=f"PGD eps {settings['eps'] * 255:g}/255, {settings['steps']} steps")
        attack = {**settings, "eps_255": settings["eps"] * 255, "step_size_255": settings["step_size"] * 255,
                  "batch_size": cfg.ATTACK.BATCH_SIZE, "norm": "linf", "labels": "ground truth per segment"}
        seconds = result["elapsed"]
        scalars = log_evaluation(stage, clean, adv)
        stages.write_results(stage, {
            "clean": _three(clean), "adversarial": _three(adv), "attack": attack, "checkpoint": weights,
            "timings": {"attack_s": round(seconds, 3)}, "segments": result["items"],
            "segments_per_s": result["items"] / max(seconds, 1e-9), "plots": [str(p) for p in plot_paths],
            "scalars": scalars})
        return 0
    finally:
        dist.cleanup()


def _robustness_stage(stage, loader, tokens, weights):
    """The ROBUSTNESS path (--attack/--sweep-*/--report): every setting on one pass per model."""
    import time

    from evaluation import report, robustness
    from training import stage as stages
    from training.scalars import log_evaluation

    start = time.perf_counter()
    results = robustness.run_robustness(stage, loader, tokens, lambda w: stages.build_model(stage, w),
                                        weights=weights)
    summary = report.summarize(results)
    first = next(iter(summary.values()))
    scalars = log_evaluation(stage, first["clean"], first["main"])
    stages.write_results(stage, {
        "clean": _three(first["clean"]), "adversarial": _three(first["main"]),
        "attack": first["settings"], "checkpoint": weights,
        "timings": {"robustness_s": round(time.perf_counter() - start, 3)},
        "segments_per_s": first.get("segments_per_s"), "robustness": summary, "scalars": scalars})
    return 0


def _three(metrics):
    return {k: metrics[k] for k in ("auc_all", "auc_ano", "ap")}


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
