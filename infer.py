"""Score your own videos with a trained FrameShield checkpoint.

    python infer.py --pretrained output/synthetic/promptmil/checkpoints/best.safetensors \
        VIDEO.mp4 FRAME_FOLDER/ --output output/infer [-cfg CONFIG.yaml] [--threshold 0.4] \
        [--smooth] [--min-duration 1.0] [--merge-gap 0.5] [--attack] [--render] \
        [--annotation test.txt | --intervals 10-40,80-95] [--chunk-frames 256] [--opts KEY VALUE ...]

Per video, OUTPUT/<video name>/ gets scores.csv, scores.json, scores.png (and annotated.mp4
with --render); OUTPUT/summary.json lists every video. An OUTPUT that holds a training or
evaluation run is left alone: the scores go into OUTPUT/infer/ then. Without -cfg the config
saved beside the checkpoint (checkpoints/<tag>.yaml) is used. See README "Score your own videos" and
docs/INFERENCE.md; the logic is in apps/inference.py.
"""
import argparse
from types import SimpleNamespace


def build_parser():
    parser = argparse.ArgumentParser(description="FrameShield: anomaly scores of your own videos")
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (mp4, avi, ...) or frame folders")
    parser.add_argument("--pretrained", required=True, metavar="CKPT",
                        help="trained checkpoint (checkpoints/best.safetensors, or any format main.py reads)")
    parser.add_argument("-cfg", "--config", default=None, metavar="FILE",
                        help="YAML config (default: the <tag>.yaml saved beside the checkpoint)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE", help="override config keys")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold (default: the one stored with the checkpoint, else 0.5)")
    parser.add_argument("--smooth", action="store_true",
                        help="apply the evaluation's 32-window smoothing to the frame scores")
    parser.add_argument("--min-duration", type=float, default=0.0, metavar="S",
                        help="drop detected intervals shorter than S seconds (default 0)")
    parser.add_argument("--merge-gap", type=float, default=0.0, metavar="S",
                        help="merge detected intervals at most S seconds apart (default 0)")
    parser.add_argument("--attack", action="store_true",
                        help="also score the video attacked with PGD toward 'all normal': the published stage-3 "
                             "attack (PGD-10, eps ADV_TRAIN.EPS), or the ATTACK.* of -cfg / --opts")
    parser.add_argument("--render", action="store_true", help="write a short annotated mp4 per video")
    parser.add_argument("--render-seconds", type=float, default=20.0, metavar="S",
                        help="length of the annotated mp4, centred on the highest score (default 20)")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--annotation", default=None, metavar="LIST_FILE",
                       help="test list file holding the video's ground-truth intervals")
    truth.add_argument("--intervals", default=None, metavar="A-B,C-D",
                       help="ground-truth frame intervals (end exclusive) of a single video")
    parser.add_argument("--chunk-frames", type=int, default=256, metavar="N",
                        help="video frames scored per chunk (memory bound; default 256)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for times (default: the file's; 30 for frame folders)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def attack_source_note(config_path, cfg) -> str:
    """Where --attack's settings come from when the config is the checkpoint's own."""
    from attacks.settings import EVAL_ATTACK_KEYS
    from utils.config import load_config_file

    saved = load_config_file(config_path)
    value = lambda c, key: c[key.split(".")[0]][key.split(".")[1]]  # noqa: E731
    changed = [f"{k} {value(saved, k)} -> {value(cfg, k)}" for k in EVAL_ATTACK_KEYS if value(saved, k) != value(cfg, k)]
    return ("--attack: the published stage-3 attack (main_attack.py defaults: ATTACK.STEPS 10, ATTACK.STEP_SIZE -1 "
            "= 2.5 * eps / steps, ATTACK.EPS -1 = ADV_TRAIN.EPS, no random start, 1 restart), not the one in "
            f"{config_path}" + (f" ({', '.join(changed)})" if changed else "")
            + "; pass --opts ATTACK.* or -cfg CONFIG to choose another")


def claim_infer_output(cfg) -> list:
    """Claim cfg.OUTPUT (utils.outdir: created, locked, stale temporary files removed); a folder
    that holds a stage's run is left as it is and the scores go into its ``infer/`` subfolder
    (training.run_identity.evaluation_folder sets cfg.OUTPUT to it). Returns the lines to log."""
    from training.run_identity import evaluation_folder
    from utils.outdir import claim_output, prepare_output

    output, note = evaluation_folder("infer", cfg, prepare_output(cfg.OUTPUT))
    return ([note] if note else []) + claim_output(output, "infer.py")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from apps import inference, thresholds
    from attacks.settings import attack_settings, describe, published_eval_attack_opts
    from utils.config import get_config, save_config
    from utils.errors import ConfigError, DataError
    from utils.io import atomic_write_json
    from utils.logger import create_logger

    if args.intervals and len(args.videos) > 1:
        raise ConfigError("--intervals describes one video; with several videos use --annotation LIST_FILE")
    config_path = thresholds.resolve_config_path(args.config, args.pretrained)
    # the config beside a checkpoint holds its training attack: --attack uses the stage-3 one
    stage3 = published_eval_attack_opts() if args.attack and not args.config else []
    cfg = get_config(SimpleNamespace(config=str(config_path), opts=stage3 + list(args.opts or []),
                                     output=args.output, pretrained=args.pretrained))
    notes = claim_infer_output(cfg)
    log = create_logger(cfg.OUTPUT, 0)
    for note in notes:
        log.warning(note)
    save_config(cfg, f"{cfg.OUTPUT}/config.yaml")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    log.info(f"infer: {len(args.videos)} video(s) on {device}; config {config_path}")
    model = inference.load_model(cfg, args.pretrained, device, log)
    tokens = inference.class_tokens(cfg, device)
    threshold, source, origin = thresholds.resolve_threshold(args.threshold, args.pretrained, log)
    log.info(f"score threshold {threshold:.4g} from {source}")
    if cfg.TEST.SMOOTH and not args.smooth and origin == "checkpoint":
        log.info("the stored threshold was chosen on 32-window smoothed frame scores (TEST.SMOOTH); "
                 "pass --smooth to score the same way")
    attack = None
    if args.attack:
        attack = attack_settings(cfg)
        if stage3:
            log.info(attack_source_note(config_path, cfg))
        log.info("toward 'all normal': " + describe(attack))
    options = inference.InferenceOptions(
        threshold=threshold, threshold_source=source, smooth=args.smooth, min_duration=args.min_duration,
        merge_gap=args.merge_gap, chunk_frames=args.chunk_frames, attack=attack, render=args.render,
        render_seconds=args.render_seconds, annotation=args.annotation, intervals=args.intervals,
        fps=args.fps, checkpoint=str(args.pretrained), show_progress=not args.no_progress)
    results, failed, taken = [], [], set()
    for video in args.videos:
        out_dir = f"{cfg.OUTPUT}/{inference.unique_dir_name(video, taken)}"
        try:
            result = inference.infer_video(model, tokens, cfg, video, out_dir, options, log)
        except DataError as err:
            log.error(f"{video}: {err}")
            failed.append({"video": str(video), "error": str(err)})
            continue
        results.append({k: result.get(k) for k in ("video", "num_frames", "fps", "duration_s", "max_score",
                                                     "intervals", "auc")} | {"outputs": out_dir})
        if "attack" in result:
            results[-1]["attack"] = {k: result["attack"][k] for k in ("eps_255", "max_score", "auc", "max_linf_255")}
    atomic_write_json(f"{cfg.OUTPUT}/summary.json", {
        "checkpoint": str(args.pretrained), "config": str(config_path), "threshold": threshold,
        "threshold_source": source, "smooth": args.smooth, "videos": results, "failed": failed})
    if failed:
        log.error(f"{len(failed)} of {len(args.videos)} video(s) could not be scored: "
                  + "; ".join(f["video"] for f in failed))
        return 2
    return 0


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
