"""Stage 1 of FrameShield: PromptMIL training of X-CLIP on weak video labels, and testing.

    torchrun --nproc_per_node N main.py -cfg configs/shanghai/shanghai_server.yaml \
        --output output/shanghai/promptmil --pretrained weights/k400_16_8.pth
    python main.py -cfg ... --output ... --pretrained best.safetensors --only_test

Writes OUTPUT/config.yaml, log_rank*.txt, checkpoints/{best,last}.*, results.json,
scores.npz and plots/ (see README, "Stages").
"""
from utils.config import build_arg_parser


def main(argv=None) -> int:
    args = build_arg_parser("FrameShield stage 1: PromptMIL training and testing").parse_args(argv)
    from datasets.build import build_test_loader, build_val_loader, build_train_loader
    from utils import dist
    from evaluation.scoring import evaluate
    from training import engine, stage as stages, steps

    stage = stages.setup_stage("promptmil", args)
    try:
        tokens = stages.text_tokens(stage)
        test_loader = build_test_loader(stage.cfg, dist_info=stage.dist)
        if stage.cfg.TEST.ONLY_TEST:
            weights = stages.weights_to_test(stage)
            model = stages.build_model(stage, weights)
            result = evaluate(model, test_loader, tokens, stage.cfg, stage.logger)
            stages.report_evaluation(stage, result, weights)
            return 0
        model = stages.build_model(stage)
        train_loader = build_train_loader(stage.cfg, stage.dist)
        best = stages.BestEvaluation(stage)
        summary = engine.fit(stage, model, train_loader, test_loader, tokens, steps.promptmil_step, best,
                             val_loader=build_val_loader(stage.cfg, stage.dist))
        if not summary["stopped"]:
            stages.report_training(stage, summary, best.result)
        return 0
    finally:
        dist.cleanup()


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
