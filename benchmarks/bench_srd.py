"""Benchmark SRD (datasets.srd.apply_srd) on CPU: ms per call and per frame.

    python benchmarks/bench_srd.py [--threads 1] [--repeats 60] [--size 224]

Every timed call is forced (p=1), so the numbers are the cost of an item that is
distorted. For scale it also times, on the same machine:
  * a per-frame PIL round trip (tensor -> PIL RGBA -> paste -> RGB -> tensor for every
    frame of the item): the conversions that make up ~90% of the published
    implementation's ~1.0 ms/frame, re-created here (not the published code);
  * decoding the item's K*T JPEG frames with datasets.frames (the loader's main cost),
    to show SRD's share of a loader item.
Results go to stdout as a Markdown table (docs/bench_srd.md holds a measured copy).
Each row gives the median wall time and the median process CPU time per call; on a
shared, busy machine the CPU time (with --threads 1) is the steadier of the two.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import srd  # noqa: E402


def _median_ms(fn, repeats, warmup=5):
    """Median (wall ms, process-CPU ms) of ``repeats`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return statistics.median(wall), statistics.median(cpu)


def _test_clips(k, t, size, dtype):
    """A smooth, image-like item (gradients + blobs), so distortions act on real structure."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand((k, t, 3, size // 16, size // 16), generator=g)
    x = torch.nn.functional.interpolate(low.view(k * t, 3, size // 16, size // 16), size=(size, size),
                                        mode="bilinear", align_corners=False).view(k, t, 3, size, size)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x


def bench_srd(k, t, size, dtype, inplace, repeats):
    clips = _test_clips(k, t, size, dtype)
    g = torch.Generator().manual_seed(1)
    if inplace:
        work = clips.clone()  # inplace calls paste on top of earlier pastes: same cost
        return _median_ms(lambda: srd.apply_srd(work, g, force=True, inplace=True), repeats)
    return _median_ms(lambda: srd.apply_srd(clips, g, force=True), repeats)


def bench_pil_round_trip(k, t, size, repeats):
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image

    clips = _test_clips(k, t, size, torch.float32)
    patch = Image.new("RGBA", (size // 3, size // 3), (200, 30, 30, 255))

    def run():
        out = torch.empty_like(clips)
        for ki in range(k):
            for ti in range(t):
                frame = to_pil_image(clips[ki, ti]).convert("RGBA")
                frame.paste(patch, (10 + ti, 10 + ki), mask=patch.split()[-1])
                out[ki, ti] = pil_to_tensor(frame.convert("RGB")).float() / 255.0
        return out

    return _median_ms(run, max(repeats // 4, 5), warmup=2)


def bench_decode(k, t, size, repeats):
    from torchvision.io import encode_jpeg

    from datasets.frames import open_video

    clips = _test_clips(1, k * t, size, torch.uint8)[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(k * t):
            Path(tmp, f"img_{i:08}.jpg").write_bytes(encode_jpeg(clips[i], quality=90).numpy().tobytes())
        reader = open_video(tmp, k * t)
        return _median_ms(lambda: reader.read(list(range(k * t))), max(repeats // 4, 5), warmup=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: what a DataLoader worker uses)")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clips", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t, size = args.frames, args.size
    print(f"torch {torch.__version__}, {args.threads} threads, {size}x{size}, T={t}, "
          f"median of {args.repeats} forced calls\n")
    print("| item | input | what | wall ms / call | wall ms / frame | CPU ms / call | CPU ms / frame |")
    print("|---|---|---|---:|---:|---:|---:|")

    def row(k, kind, what, times):
        n = k * t
        wall, cpu = times
        print(f"| K={k} x T={t} | {kind} | {what} | {wall:.2f} | {wall / n:.4f} "
              f"| {cpu:.2f} | {cpu / n:.4f} |")

    for k in args.clips:
        for dtype, name in [(torch.uint8, "uint8"), (torch.float32, "float32")]:
            for inplace in (True, False):
                what = "SRD, inplace=True" if inplace else "SRD, copy (default)"
                row(k, name, what, bench_srd(k, t, size, dtype, inplace, args.repeats))
        row(k, "float32", "per-frame PIL round trip (reference)",
            bench_pil_round_trip(k, t, size, args.repeats))
        row(k, "JPEG", f"decode {k * t} frames (datasets.frames)", bench_decode(k, t, size, args.repeats))

if __name__ == "__main__":
    main()
