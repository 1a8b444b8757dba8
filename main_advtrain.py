"""Stage 2 of FrameShield: pseudo labels (--only_test), then adversarial training.

    # 2a: clip pseudo labels of the training videos -> OUTPUT/pseudo_labels.json
    torchrun --nproc_per_node N main_advtrain.py -cfg configs/shanghai/shanghai_advtrain.yaml \
        --output output/shanghai/advtrain --only_test \
        --pretrained output/shanghai/promptmil/checkpoints/best.safetensors
    # 2b: PGD adversarial training on pseudo labels + SRD pseudo anomalies (same --output)
    torchrun --nproc_per_node N main_advtrain.py -cfg ... --output output/shanghai/advtrain --pretrained ...

The pseudo-label file is read from ADV_TRAIN.PSEUDO_LABEL_FILE ('' = OUTPUT/pseudo_labels.json).
"""
from utils.config import build_arg_parser


def main(argv=None) -> int:
    args = build_arg_parser("FrameShield stage 2: pseudo labels and adversarial training").parse_args(argv)
    from datasets.synthetic import true_intervals
    from datasets.build import build_test_loader, build_val_loader, build_train_as_test_loader, build_train_loader
    from utils import dist
    from attacks.settings import attack_settings
    from training.adv_attack import TrainAttack
    from training import engine, pseudo_labels, stage as stages, steps

    stage = stages.setup_stage("advtrain", args)
    cfg = stage.cfg
    try:
        tokens = stages.text_tokens(stage)
        target = pseudo_labels.pseudo_label_path(cfg)
        if cfg.TEST.ONLY_TEST:
            model = stages.build_model(stage, stages.weights_to_test(stage))
            loader = build_train_as_test_loader(cfg, dist_info=stage.dist)
            labels = pseudo_labels.generate_pseudo_labels(model, loader, tokens, cfg, stage.logger)
            if stage.is_main:
                pseudo_labels.write_pseudo_labels(target, labels)
                stage.logger.info(f"wrote {target} ({len(labels)} videos)")
            anomalous = {r.path for r in loader.dataset.records if r.is_anomalous}
            results = {"pseudo_labels": str(target), "checkpoint": stages.weights_to_test(stage),
                       "rule": cfg.ADV_TRAIN.PSEUDO_LABEL_RULE, **pseudo_labels.summarise(labels, anomalous)}
            truth = true_intervals(cfg.DATA.ROOT)
            if truth is not None:  # synthetic data: the generator knows every training interval
                results["agreement"] = pseudo_labels.agreement(labels, truth)
                stage.logger.info(f"pseudo labels vs the true clip labels of the anomalous videos: "
                                  f"{results['agreement']}")
            # results.json of this step (the training that follows in this folder replaces it)
            stages.write_results(stage, results)
            dist.barrier()
            return 0
        train_loader = build_train_loader(cfg, stage.dist)
        labels = None
        if cfg.ADV_TRAIN.PSEUDO_LABEL:
            labels = pseudo_labels.read_pseudo_labels(target, train_loader.dataset.records)
            stage.logger.info(f"read pseudo labels of {len(labels)} videos from {target}")
        model = stages.build_model(stage)
        test_loader = build_test_loader(cfg, dist_info=stage.dist)
        best = stages.BestEvaluation(stage)
        inner = TrainAttack(cfg, logger=stage.logger)
        step = steps.make_advtrain_step(labels, inner)
        stage.logger.info("adversarial training, inner attack: " + inner.describe())
        summary = engine.fit(stage, model, train_loader, test_loader, tokens, step, best,
                             val_loader=build_val_loader(cfg, stage.dist))
        if not summary["stopped"]:
            summary["pseudo_labels"] = str(target) if labels is not None else None
            summary["attack"] = {**attack_settings(cfg, "train"), "init": inner.init, "schedule": inner.schedule,
                                 "steps_by_epoch": [inner.settings(e)["steps"] for e in range(cfg.TRAIN.EPOCHS)]}
            summary["overfit_checks"] = inner.checks
            stages.report_training(stage, summary, best.result)
        return 0
    finally:
        dist.cleanup()


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
