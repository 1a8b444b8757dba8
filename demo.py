"""FrameShield quick-start demo: every stage on the embedded synthetic dataset, one table.

    python demo.py                          # default preset, seed 0, output/demo (2-core CPU: ~11 min)
    python demo.py --preset fast            # 12/8 videos, about a minute, output/demo_fast
    python demo.py --seeds 3                # seeds 0, 1, 2: mean and spread in the table
    python demo.py --device cpu --output output/demo_cpu

Generates the dataset if absent, trains the clean PromptMIL baseline, pseudo labels,
FrameShield and two ablations, attacks every model with the same PGD, and writes
OUTPUT/summary.json, OUTPUT/summary.md and OUTPUT/plots/. Run the same command again to
resume after an interruption (finished stages are reused). See apps/demo.py.
"""
import argparse
import signal
import sys


def build_parser():
    from apps.demo_stages import DEMO_PRESETS
    from utils.flags import non_negative_int, positive_int

    parser = argparse.ArgumentParser(description="FrameShield quick-start demo on the synthetic dataset")
    parser.add_argument("--preset", default="default", choices=sorted(DEMO_PRESETS),
                        help="; ".join(f"{k}: {v.description}" for k, v in DEMO_PRESETS.items()))
    parser.add_argument("--seeds", type=positive_int(), default=1, help="number of training seeds (seed 0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first training seed")
    parser.add_argument("--output", default=None,
                        help="output folder (default output/demo for the default preset, "
                             "output/demo_<preset> for the others, so presets never replace each other's stages)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: all visible CUDA GPUs (torchrun), else the CPU")
    parser.add_argument("--jobs", type=non_negative_int("0 = min(4, cores)"), default=0,
                        help="CPU only: stages run side by side (default: min(4, cores)), each "
                             "with cores // jobs threads")
    parser.add_argument("--data", default=None,
                        help="synthetic dataset folder (default data/synthetic, data/synthetic_small "
                             "or data/synthetic_large by preset); generated when absent")
    parser.add_argument("--no-plots", action="store_true", help="skip OUTPUT/plots")
    parser.add_argument("--quiet", action="store_true", help="no progress line, only stage start/finish")
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from apps.demo import run_demo
    from apps.demo_stages import default_output
    from utils.errors import FrameShieldError

    # a stop request (Ctrl-C, or SIGTERM from a scheduler / `kill`) ends the demo through
    # KeyboardInterrupt, whose cleanup sends SIGTERM to the running stages (training stages
    # checkpoint and stop), so the same command resumes later
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _interrupt)
    try:
        run_demo(preset=args.preset, seeds=range(args.first_seed, args.first_seed + args.seeds),
                 output=args.output or default_output(args.preset), device=args.device, jobs=args.jobs,
                 data_dir=args.data, plots=not args.no_plots, quiet=args.quiet)
    except FrameShieldError as err:
        print(f"\nerror: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
