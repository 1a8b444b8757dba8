"""Render docs/images/srd_strip.png: one normal synthetic video before and after SRD.

    python benchmarks/srd_strip.py [--out docs/images/srd_strip.png] [--data DIR]
                                   [--clips 4] [--frames 3] [--severity medium] [--zoom 3]

Without ``--data`` the small synthetic dataset is generated into a temporary folder
(datasets.synthetic, seed 0). The first normal training video is read at its native
64x64, K clips x T frames spread evenly over it. SRD runs exactly as in training
(uint8 frames, before the view transforms); the generator seed is the first one from 0 up
whose run starts after clip 0 and spans two or more clips, so the strip shows untouched
and distorted clips side by side. Top row: the original frames with the box SRD will
paste into outlined in red. Bottom row: the SRD output (labels under each clip).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import srd  # noqa: E402
from datasets.frames import open_video  # noqa: E402
from datasets.lists import parse_list_file  # noqa: E402
from utils.io import atomic_path  # noqa: E402

GAP = 4


def read_normal_item(data_root: Path, k: int, t: int) -> tuple[torch.Tensor, str]:
    """``uint8 [K, T, 3, H, W]`` from the first normal training video, and its path."""
    records = parse_list_file(data_root / "train.txt")
    record = next(r for r in records if not r.is_anomalous)
    reader = open_video(data_root / record.path, record.num_frames, list_start=record.start_frame)
    inds = np.linspace(0, record.num_frames - 1, k * t).round().astype(int)
    frames = reader.read(inds)
    return frames.view(k, t, *frames.shape[1:]), record.path


def pick_seed(shape, severity, limit=1000) -> int:
    for seed in range(limit):
        g = torch.Generator().manual_seed(seed)
        torch.rand((), generator=g)  # apply_srd's probability draw
        plan = srd.plan_srd(shape, g, severity=severity)
        if plan.start > 0 and plan.length >= 2:
            return seed
    raise RuntimeError("no seed gives a run that starts after clip 0 and spans two clips")


def render_strip(clips, out, boxes, pa_labels, zoom) -> Image.Image:
    k, t, _, h, w = clips.shape
    fw, fh = w * zoom, h * zoom
    label_h = 14
    width = k * t * fw + (k * t - 1) * GAP + (k - 1) * 2 * GAP
    canvas = Image.new("RGB", (width, 2 * fh + GAP + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for ki in range(k):
        for ti in range(t):
            for row, frames in enumerate((clips, out)):
                img = Image.fromarray(frames[ki, ti].permute(1, 2, 0).numpy())
                canvas.paste(img.resize((fw, fh), Image.NEAREST), (x, row * (fh + GAP)))
            if pa_labels[ki]:
                x0, y0, x1, y1 = (boxes[ki, ti] * zoom).tolist()
                draw.rectangle((x + x0, y0, x + x1 - 1, y1 - 1), outline=(255, 0, 0))
            if ti == 0:
                draw.text((x + 2, 2 * fh + GAP + 1), f"clip {ki}: label {int(pa_labels[ki])}", fill="black")
            x += fw + GAP
        x += 2 * GAP
    return canvas


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/srd_strip.png")
    parser.add_argument("--data", default=None, help="a synthetic dataset root (default: make one)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--severity", default="medium", choices=srd.SEVERITIES)
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else None
        if root is None:
            from datasets.synthetic import make_synthetic_dataset

            root = Path(tmp) / "synthetic"
            make_synthetic_dataset(root, preset="small", seed=0)
        clips, video = read_normal_item(root, args.clips, args.frames)
    seed = pick_seed(clips.shape, args.severity)
    out, pa_labels, boxes, plan = srd.apply_srd_with_plan(
        clips, torch.Generator().manual_seed(seed), force=True, severity=args.severity)
    strip = render_strip(clips, out, boxes, pa_labels, args.zoom)
    with atomic_path(args.out) as tmp_png:
        strip.save(tmp_png, format="PNG", optimize=True)
    print(f"{args.out}: video {video}, seed {seed}, clips {plan.start}..{plan.start + plan.length - 1}, "
          f"box {plan.box}, velocity ({plan.velocity[0]:.1f}, {plan.velocity[1]:.1f}) px/frame, "
          f"distortions {', '.join(plan.distortions)}")


if __name__ == "__main__":
    main()
