"""How often a clip SRD labels anomalous is visibly changed in the model input.

    python benchmarks/srd_visibility.py [--draws 60] [--views 2] [--sizes 320x240 ...]

For each frame size, one normal video of textured frames goes through the training loader
(DATA.INPUT_SIZE 224, published clip settings K=16, T=5) with SRD forced, ``--draws`` times
(epochs 0, 1, ...). A labelled clip counts as visible in a view when any pixel of its model
input differs from the same item without SRD. Two code paths are compared on the same
frames, clip offsets and augmentation draws:

- before: the path up to issue 13: ``datasets.srd.apply_srd`` on the decoded full frames,
  then the views (reproduced here from the public functions);
- after: the loader as it is (``datasets.srd.ItemSRD``: each view pastes on its crops).

Also reported: the patch width as a share of the crop width the model sees (view 1).
Frames are held in memory (decoding is not what is measured). Results: docs/bench_srd.md.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import srd  # noqa: E402
from datasets.lists import parse_list_file  # noqa: E402
from datasets.video_dataset import (_TAG_AUGMENT, _TAG_SRD, TrainVideoDataset,  # noqa: E402
                                    seeded_global_rngs)
from utils.config import get_default_config  # noqa: E402

NUM_DISTINCT = 8  # distinct frames, repeated along the video
CREATED = []  # every ItemSRD the loader makes (to read its plans)


class _RecordedItemSRD(srd.ItemSRD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CREATED.append(self)


def textured_frames(n, h, w, seed=0):
    """``uint8 [n, 3, h, w]``: smooth colour blobs plus fine noise, moving a little per frame."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, h // 24 + 2, w // 24 + 2), generator=g)
    base = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    out = []
    for i in range(n):
        noise = torch.rand((3, h, w), generator=g) * 0.15
        out.append(torch.roll(base, shifts=(2 * i, 3 * i), dims=(1, 2)) * 0.85 + noise)
    return (torch.stack(out) * 255).round().clamp(0, 255).to(torch.uint8)


def build(root, h, w, views, resize, pseudo_anomaly):
    cfg = get_default_config()
    cfg.DATA.ROOT = str(root)
    cfg.DATA.TRAIN_FILE = str(root / "train.txt")
    cfg.DATA.INPUT_SIZE = 224
    cfg.DATA.NUM_CLIPS, cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL = 16, 5, 6
    cfg.DATA.NUM_WORKERS = 0
    cfg.DATA.RESIZE = resize
    cfg.TRAIN.USE_VIEW2 = views == 2
    cfg.ADV_TRAIN.PSEUDO_ANOMALY = pseudo_anomaly
    cfg.ADV_TRAIN.SRD_PROB = 1.0
    dataset = TrainVideoDataset(parse_list_file(cfg.DATA.TRAIN_FILE), cfg, cfg.DATA.TRAIN_FILE)
    frames = textured_frames(NUM_DISTINCT, h, w)
    dataset.read_frames = lambda vid, inds: (frames[torch.as_tensor(inds) % NUM_DISTINCT], 0)
    return dataset, frames


def measure(h, w, draws, views, resize="antialias"):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "frames" / "normal").mkdir(parents=True)
        (root / "train.txt").write_text("frames/normal 0 600 0\n")
        with_srd, frames = build(root, h, w, views, resize, True)
        plain, _ = build(root, h, w, views, resize, False)
    k = with_srd.num_clips
    counts = {"labelled_before": 0, "labelled_after": 0}
    for v in range(views):
        counts[f"before_{v}"] = counts[f"after_{v}"] = 0
    widths_before, widths_after = [], []
    crop_w = with_srd.views[0].crop_box(h, w)[3]
    for epoch in range(draws):
        reference = plain[(0, epoch)]["imgs"]
        item = with_srd[(0, epoch)]
        labels = item["pa_labels"].bool()
        counts["labelled_after"] += int(labels.sum())
        # before: SRD on the decoded frames, then the views (same seeds as the loader)
        clips = frames[item["frame_inds"].reshape(-1) % NUM_DISTINCT].view(k, -1, 3, h, w)
        generator = torch.Generator().manual_seed(with_srd.item_seed(0, epoch, _TAG_SRD))
        old, old_labels, _, plan = srd.apply_srd_with_plan(clips, generator, force=True)
        with seeded_global_rngs(with_srd.item_seed(0, epoch, _TAG_AUGMENT)):
            old_imgs = with_srd._views(old)
        old_labels = old_labels.bool()
        counts["labelled_before"] += int(old_labels.sum())
        widths_before.append(plan.box[2] / crop_w)
        widths_after.append(CREATED[-1].plans[0].box[2] / 224)  # view 1's patch
        for v in range(views):
            changed = (item["imgs"][v] != reference[v]).flatten(1).any(dim=1)
            counts[f"after_{v}"] += int((changed & labels).sum())
            changed_old = (old_imgs[v] != reference[v]).flatten(1).any(dim=1)
            counts[f"before_{v}"] += int((changed_old & old_labels).sum())
    return counts, widths_before, widths_after


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--views", type=int, default=2, choices=(1, 2))
    parser.add_argument("--sizes", nargs="+", default=["320x240", "360x240", "856x480", "1920x1080"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    srd.ItemSRD = _RecordedItemSRD  # the loader looks it up at call time
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    head = "| frames | labelled clips | " + " | ".join(
        f"view {v + 1} visible before | view {v + 1} visible after" for v in range(args.views))
    print(head + " | patch width / crop width, before (max) | after (max) |")
    print("|" + "---|" * (2 + 2 * args.views + 2))
    for text in args.sizes:
        w, h = (int(v) for v in text.split("x"))
        counts, before_w, after_w = measure(h, w, args.draws, args.views)
        cells = []
        for v in range(args.views):
            cells.append(f"{counts[f'before_{v}'] / counts['labelled_before']:.1%}")
            cells.append(f"{counts[f'after_{v}'] / counts['labelled_after']:.1%}")
        print(f"| {w}x{h} | {counts['labelled_before']} / {counts['labelled_after']} | " + " | ".join(cells)
              + f" | {max(before_w):.2f} | {max(after_w):.2f} |", flush=True)


if __name__ == "__main__":
    main()
