"""Attacked segments per second of each robustness attack on the tiny X-CLIP (CPU or GPU).

    OMP_NUM_THREADS=2 python benchmarks/bench_attacks.py [--frames 2 4] [--clips 16] [--device cpu]
        [--steps 10] [--square-queries 50] [--repeats 5]

Random weights and random clips: the cost of an attack does not depend on what the model
learnt. One "segment" is one clip of T frames attacked once (all restarts included); the
best of ``--repeats`` timings is printed (after one warm-up attack), since a shared machine
only ever slows a run down. The cost is linear in steps/queries (100 steps: about a tenth
of the 10-step rate), so short runs repeated often give steadier numbers. Numbers go into docs/ROBUSTNESS.md. Not a test.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eps", type=float, default=2.0, help="1/255 units")
    parser.add_argument("--steps", type=int, default=10, help="gradient steps of pgd/apgd")
    parser.add_argument("--square-queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from clip import tokenize
    from models import xclip
    from evaluation import robustness as rb

    k = args.steps
    runs = [("clean forward", None, 0, 1), ("pgd", "pgd", k, 1), ("pgd", "pgd", k, 4),
            ("apgd-ce", "apgd-ce", k, 1), ("apgd-margin", "apgd-margin", k, 1),
            ("square", "square", args.square_queries, 1)]
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.clips} clips per batch, "
          f"eps {args.eps:g}/255")
    print(f"{'T':>2} {'attack':<14} {'steps':>5} {'R':>2} {'segments/s':>11}")
    for frames in args.frames:
        torch.manual_seed(0)
        model, _, _ = xclip.load(None, "tiny", T=frames)
        model = model.to(args.device).eval()
        tokens = tokenize(["normal", "abnormal"]).to(args.device)
        size = model.input_resolution
        videos = torch.rand(args.clips, frames, 3, size, size, device=args.device)
        labels = torch.arange(args.clips, device=args.device) % 2
        rb.run_attack("pgd", model, videos, tokens, labels, args.eps / 255, 2)  # warm-up
        for title, name, steps, restarts in runs:
            seconds = min(_timed(model, videos, tokens, labels, args, name, steps, restarts)
                          for _ in range(args.repeats))
            print(f"{frames:>2} {title:<14} {steps:>5} {restarts:>2} {args.clips / seconds:>11.2f}", flush=True)


def _timed(model, videos, tokens, labels, args, name, steps, restarts):
    from evaluation import robustness as rb

    started = time.perf_counter()
    if name is None:
        with torch.no_grad():
            model(videos, tokens)
    else:
        rb.run_attack(name, model, videos, tokens, labels, args.eps / 255, steps,
                      generator=torch.Generator().manual_seed(0), restarts=restarts, random_start=restarts > 1)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
