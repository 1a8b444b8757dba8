"""The embedded synthetic surveillance dataset (no downloads needed).

Why it looks like this: a tiny X-CLIP trained from scratch on two CPU cores must be able
to learn it from video-level labels alone, so the task is kept close to ShanghaiTech but
learnable: a few fixed camera scenes (static, procedurally drawn backgrounds) shared by
the training and test splits, slowly walking pedestrians in every video, and anomalous
events that are salient, drawn natively at 64x64 and fully visible throughout their
labelled frame interval:

- ``vehicle``: a car driving fast back and forth over a walkway,
- ``runner``: a person sprinting (wide stride, motion streak) back and forth,
- ``fight``: two people jittering violently on one spot, one of them knocked down now and then,
- ``fire``: a flickering fire with smoke.

Layout written under ``root`` (ShanghaiTech-style lists, see docs/DATASETS.md)::

    frames/{train,test}/<SS_NNNN>/img_{:08}.jpg   frames numbered from 0, 64x64 RGB JPEG
    train.txt   <dir> 0 <num_frames> <label>                 (video label only: weak supervision)
    train_fit.txt  train.txt without the validation videos   (what TRAIN.SELECT val trains on)
    val.txt     the held-back training videos in test-list format, with their true intervals
    test.txt    <dir> <num_frames> <label> <start> <end>     (normal videos: 0 <num_frames>)
    labels.csv  id,name / 0,normal / 1,abnormal
    meta.json   preset, seed, counts, per-video scene, anomaly type and interval (train too)

Every video is rendered from its own random streams seeded by (seed, split, index), so the
output is byte-identical for the same seed and preset. The whole dataset is written into
a temporary sibling folder and renamed into place, so a reader never sees half a dataset.

CLI: ``python -m datasets.synthetic --out data/synthetic [--preset small|default|large|variant|variant_small]
[--seed S] [--overwrite] [--montage docs/images/synthetic_examples.png]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.synthetic_scenes import FRAME_SIZE, NUM_SCENES, get_scene
from datasets.synthetic_world import (ANOMALY_TYPES, FILENAME_TMPL, GENERATOR, GENERATOR_VERSION, JPEG_QUALITY, SPLITS,
                                      VideoSpec, render_video)
from datasets.synthetic_variant import (VARIANT_ANOMALY_TYPES, VARIANT_FRAME_SIZE, VARIANT_NUM_SCENES, VARIANT_TAG,
                                        get_variant_scene, render_variant_video)
from utils.errors import ConfigError, DataError
from utils.io import atomic_path, atomic_write_json, atomic_write_text

@dataclass(frozen=True)
class Preset:
    """Sizes of one dataset preset; interval cover is the anomalous fraction of a video."""

    num_train: int
    num_test: int
    min_frames: int
    max_frames: int
    train_anomalous_fraction: float = 0.5
    test_anomalous_fraction: float = 0.5
    min_cover: float = 0.15
    max_cover: float = 0.40
    family: str = "default"  # "variant": the second world (datasets.synthetic_variant)


DATASET_PRESETS = {
    "small": Preset(num_train=12, num_test=8, min_frames=32, max_frames=48),
    "default": Preset(num_train=150, num_test=60, min_frames=64, max_frames=96),
    "large": Preset(num_train=400, num_test=160, min_frames=64, max_frames=128),
    # the family nobody tunes on: other scenes, 48 px frames, other events and speeds, other lengths
    "variant": Preset(num_train=150, num_test=60, min_frames=48, max_frames=128, min_cover=0.12,
                      max_cover=0.45, family="variant"),
    "variant_small": Preset(num_train=12, num_test=8, min_frames=32, max_frames=56, min_cover=0.12,
                            max_cover=0.45, family="variant"),
}


def _family(preset):
    """(anomaly types, number of scenes, seed-key tag or None, frame size, scene names) of a preset."""
    if preset.family == "variant":
        return (VARIANT_ANOMALY_TYPES, VARIANT_NUM_SCENES, VARIANT_TAG, VARIANT_FRAME_SIZE,
                [get_variant_scene(i).name for i in range(VARIANT_NUM_SCENES)])
    return ANOMALY_TYPES, NUM_SCENES, None, FRAME_SIZE, [get_scene(i).name for i in range(NUM_SCENES)]


def render(spec: VideoSpec, with_event: bool = True) -> np.ndarray:
    """The frames of ``spec`` in its family's world."""
    if spec.family == "variant":
        return render_variant_video(spec, with_event)
    return render_video(spec, with_event)


# --------------------------------------------------------------------------- planning


def _plan_split(preset, seed, split):
    count = preset.num_train if split == "train" else preset.num_test
    fraction = preset.train_anomalous_fraction if split == "train" else preset.test_anomalous_fraction
    types, num_scenes, tag, _, _ = _family(preset)
    rng = np.random.default_rng([seed, SPLITS.index(split), 1_000_003] + ([tag] if tag is not None else []))
    n_anom = int(round(count * fraction))
    kinds = [types[i % len(types)] for i in range(n_anom)] + [None] * (count - n_anom)
    kinds = [kinds[i] for i in rng.permutation(count)]
    scenes = rng.permutation(np.arange(count) % num_scenes)
    specs = []
    for index, (kind, scene) in enumerate(zip(kinds, scenes)):
        num_frames = int(rng.integers(preset.min_frames, preset.max_frames + 1))
        interval = None
        if kind is not None:
            length = int(round(num_frames * rng.uniform(preset.min_cover, preset.max_cover)))
            length = max(4, min(length, num_frames - 1))
            start = int(rng.integers(1, num_frames - length + 1))
            interval = (start, start + length)
        specs.append(VideoSpec(split, index, int(scene), num_frames, kind, interval, seed, preset.family))
    return specs


def plan_videos(preset: str = "default", seed: int = 0) -> list[VideoSpec]:
    """All videos of a dataset (train first, then test); deterministic from (preset, seed)."""
    if preset not in DATASET_PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {sorted(DATASET_PRESETS)}")
    return [s for split in SPLITS for s in _plan_split(DATASET_PRESETS[preset], seed, split)]


def _list_lines(specs):
    train = [f"{s.rel_dir} 0 {s.num_frames} {s.label}" for s in specs if s.split == "train"]
    test = []
    for s in specs:
        if s.split == "test":
            start, end = s.interval if s.anomaly else (0, s.num_frames)
            test.append(f"{s.rel_dir} {s.num_frames} {s.label} {start} {end}")
    return "\n".join(train) + "\n", "\n".join(test) + "\n"


def _meta(preset, seed, specs):
    counts = {}
    for split in SPLITS:
        chosen = [s for s in specs if s.split == split]
        counts[split] = {"videos": len(chosen), "anomalous": sum(s.label for s in chosen),
                         "frames": sum(s.num_frames for s in chosen),
                         "anomalous_frames": sum(s.interval[1] - s.interval[0] for s in chosen if s.anomaly)}
    types, _, _, frame_size, scene_names = _family(DATASET_PRESETS[preset])
    meta = {
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
        "preset": preset, "seed": seed, "preset_sizes": DATASET_PRESETS[preset].__dict__,
        "frame_size": frame_size, "filename_tmpl": FILENAME_TMPL, "jpeg_quality": JPEG_QUALITY,
        "scenes": scene_names, "anomaly_types": list(types),
        "counts": counts,
        "videos": {s.rel_dir: {"split": s.split, "scene": scene_names[s.scene], "num_frames": s.num_frames,
                               "label": s.label, "anomaly": s.anomaly,
                               "interval": list(s.interval) if s.interval else None} for s in specs},
    }
    if DATASET_PRESETS[preset].family == "default":  # the default family's meta.json stays byte-identical
        meta["preset_sizes"] = {k: v for k, v in meta["preset_sizes"].items() if k != "family"}
    return meta


# --------------------------------------------------------------------------- writing


def _result_paths(root):
    return {"root": root, "train_list": root / "train.txt", "test_list": root / "test.txt",
            "labels": root / "labels.csv", "meta": root / "meta.json", "frames": root / "frames",
            "train_fit_list": root / "train_fit.txt", "val_list": root / "val.txt"}


VAL_EVERY = 5  # every 5th anomalous and every 5th normal training video is held back (20 %)


def validation_split(meta) -> tuple[list, list]:
    """(fit, val) rel_dirs of the training videos: a deterministic, label-stratified 20 %.

    Synthetic training videos have known intervals (meta.json), so a held-back part of them
    can be scored like a test list: model selection (TRAIN.SELECT val) and every setting of
    the demo are chosen on it, never on the test split. Chosen by position within each
    label (every VAL_EVERY-th), so both labels are represented and the split depends on
    nothing but the dataset.
    """
    train = sorted(k for k, v in meta["videos"].items() if v["split"] == "train")
    val = []
    for label in (0, 1):
        same = [k for k in train if meta["videos"][k]["label"] == label]
        val += same[VAL_EVERY - 1::VAL_EVERY]
    val_set = set(val)
    return [k for k in train if k not in val_set], sorted(val)


def true_intervals(root) -> dict | None:
    """{video rel_dir: (start, end) or None} of every video of the synthetic dataset at ``root``
    (train videos too), or None when ``root`` holds no synthetic dataset. For reports only:
    training never reads it."""
    meta = _read_meta(Path(root)) if root else None
    if meta is None:
        return None
    return {k: tuple(v["interval"]) if v.get("interval") else None for k, v in meta["videos"].items()}


def write_validation_split(root) -> dict:
    """Write ``train_fit.txt`` and ``val.txt`` of the synthetic dataset at ``root`` from its
    meta.json (cheap: no frames are rendered); returns the dataset's paths."""
    root = Path(root).absolute()
    paths = _result_paths(root)
    meta = _read_meta(root)
    if meta is None:
        raise DataError(f"{root} holds no synthetic dataset (no meta.json of {GENERATOR})")
    fit, val = validation_split(meta)
    videos = meta["videos"]
    fit_text = "".join(f"{k} 0 {videos[k]['num_frames']} {videos[k]['label']}\n" for k in fit)
    val_lines = []
    for k in val:
        v = videos[k]
        start, end = v["interval"] if v["interval"] else (0, v["num_frames"])
        val_lines.append(f"{k} {v['num_frames']} {v['label']} {start} {end}\n")
    for path, text in ((paths["train_fit_list"], fit_text), (paths["val_list"], "".join(val_lines))):
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
    return paths


def _read_meta(root):
    """meta.json of a synthetic dataset at ``root``, or None when it is not one."""
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _is_same(meta, preset, seed):
    return (meta is not None and meta.get("preset") == preset and meta.get("seed") == seed
            and meta.get("generator_version") == GENERATOR_VERSION)


def _write_dataset(folder, preset, seed, specs):
    for spec in specs:
        video_dir = folder / spec.rel_dir
        video_dir.mkdir(parents=True)
        for t, frame in enumerate(render(spec)):
            Image.fromarray(frame).save(video_dir / FILENAME_TMPL.format(t), format="JPEG",
                                        quality=JPEG_QUALITY, subsampling=0)
    train_text, test_text = _list_lines(specs)
    atomic_write_text(folder / "train.txt", train_text)
    atomic_write_text(folder / "test.txt", test_text)
    atomic_write_text(folder / "labels.csv", "id,name\n0,normal\n1,abnormal\n")
    atomic_write_json(folder / "meta.json", _meta(preset, seed, specs))  # last: marks completion


def make_synthetic_dataset(root, preset: str = "default", seed: int = 0, overwrite: bool = False) -> dict:
    """Write the synthetic dataset to ``root``; return its paths (dict of Path).

    Keys: root, train_list, test_list, labels, meta, frames. If ``root`` already holds the
    same dataset (meta.json with this preset, seed and generator version) nothing is
    regenerated. A different synthetic dataset there is replaced only with
    ``overwrite=True``. A non-empty folder that is not a synthetic dataset is never
    deleted, not even with ``overwrite`` (so ``--out .`` cannot wipe a repository):
    DataError then asks for another path.
    """
    root = Path(root).absolute()
    specs = plan_videos(preset, seed)  # validates the preset before touching the disk
    if root.exists():
        if not root.is_dir():
            raise DataError(f"synthetic dataset root {root} exists and is not a folder; choose another --out")
        meta = _read_meta(root)
        if _is_same(meta, preset, seed):
            return write_validation_split(root)
        if any(root.iterdir()):
            if meta is None:
                raise DataError(f"{root} is not empty and holds no synthetic dataset (no meta.json of "
                                f"{GENERATOR}); refusing to write there. Choose another --out or empty it.")
            if not overwrite:
                raise DataError(f"{root} holds a synthetic dataset with preset={meta.get('preset')!r} "
                                f"seed={meta.get('seed')} version={meta.get('generator_version')}, not "
                                f"preset={preset!r} seed={seed}; pass overwrite=True (--overwrite) to replace it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(staging, preset, seed, specs)
        _move_into_place(staging, root, preset, seed)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return write_validation_split(root)


def _move_into_place(staging, root, preset, seed):
    """Rename the finished ``staging`` folder to ``root`` (replacing an empty or old synthetic one)."""
    old = None
    if root.exists():
        if _is_same(_read_meta(root), preset, seed):
            return  # another process finished the same dataset first
        if any(root.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "data")
        else:
            root.rmdir()
    try:
        os.replace(staging, root)
    except OSError:
        if not _is_same(_read_meta(root), preset, seed):
            raise
    if old is not None:
        shutil.rmtree(old)


# --------------------------------------------------------------------------- montage


def render_montage(path, seed: int = 0, scale: int = 2) -> Path:
    """Write a PNG grid: one row per scene, columns normal + one frame per anomaly type.

    Frames are rendered in memory (nothing else is written), upscaled ``scale`` x with
    nearest neighbour so single pixels stay visible; a red box marks each event.
    """
    cols = ("normal",) + ANOMALY_TYPES
    cell, pad, top, left = FRAME_SIZE * scale, 4, 16, 70
    sheet = Image.new("RGB", (left + len(cols) * (cell + pad), top + NUM_SCENES * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(cols):
        draw.text((left + c * (cell + pad) + 4, 2), name, fill="black")
    for scene in range(NUM_SCENES):
        draw.text((4, top + scene * (cell + pad) + cell // 2 - 6), get_scene(scene).name, fill="black")
        for c, kind in enumerate(cols):
            anomaly = None if kind == "normal" else kind
            spec = VideoSpec("test", 900 + scene * 10 + c, scene, 48, anomaly, (8, 40) if anomaly else None, seed)
            frame = render_video(spec)[20]
            img = Image.fromarray(frame).resize((cell, cell), Image.NEAREST)
            if anomaly:  # outline where the event changed the frame (the sprite, not the glow)
                plain = render_video(spec, with_event=False)[20]
                ys, xs = np.nonzero(np.abs(frame.astype(np.int16) - plain).max(-1) > 60)
                box = (xs.min() * scale - 2, ys.min() * scale - 2, (xs.max() + 1) * scale + 1, (ys.max() + 1) * scale + 1)
                ImageDraw.Draw(img).rectangle(box, outline=(255, 0, 0))
            sheet.paste(img, (left + c * (cell + pad), top + scene * (cell + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path


# --------------------------------------------------------------------------- CLI


def _folder_size(root):
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write FrameShield's embedded synthetic surveillance dataset.")
    parser.add_argument("--out", default=None, help="dataset root folder (e.g. data/synthetic)")
    parser.add_argument("--preset", default="default", choices=sorted(DATASET_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic dataset of another preset/seed at --out")
    parser.add_argument("--montage", default=None, help="also write an example PNG grid to this path")
    args = parser.parse_args(argv)
    if args.out is None and args.montage is None:
        parser.error("give --out (and/or --montage)")
    if args.montage:
        print(f"montage written to {render_montage(args.montage, seed=args.seed)}")
    if args.out:
        began = time.perf_counter()
        try:
            paths = make_synthetic_dataset(args.out, args.preset, args.seed, args.overwrite)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        meta = json.loads(paths["meta"].read_text())
        counts = meta["counts"]
        print(f"synthetic dataset ({args.preset}, seed {args.seed}) at {paths['root']}: "
              f"train {counts['train']['videos']} videos ({counts['train']['anomalous']} anomalous), "
              f"test {counts['test']['videos']} videos ({counts['test']['anomalous']} anomalous), "
              f"{_folder_size(paths['root']) / 1e6:.1f} MB, {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
