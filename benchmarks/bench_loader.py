"""Training-loader throughput beside the raw JPEG-decode rate of the same frames.

Measures, on the synthetic dataset (written to a temporary folder unless ``--data`` names
one; if datasets.synthetic is unavailable the script writes plain frame folders itself):

1. raw decode: the frames the measured items read, as JPEG bytes already in memory,
   decoded with torchvision's batched ``decode_jpeg`` in this process (frames/s), and the
   same including the file reads;
2. one item in this process, by stage: read+decode (each distinct frame once), SRD (when
   --srd), view 1 and view 2 (uint8), and the rest of the item (its uint8 buffer, seeding)
   (ms); items are uint8 (the float conversion happens on the training device);
3. the training loader (datasets.build.build_train_loader) for each ``--workers`` count:
   items/s and decoded frames/s in total and per worker, the first batch (worker start-up)
   excluded;
4. the share of the raw decode rate the 0-worker loader delivers, interleaved batch by batch
   with the raw decode (with reads) of the same batch's frames, so load on a shared machine
   hits both alike (the ratio issue 18 asks about).

Run: ``python -m benchmarks.bench_loader [--workers 0 1 2] [--batches 6] [--json out.json]``.
Results on the development machine are in docs/bench_loader.md.
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="", help="synthetic dataset root (default: generate into a temp folder)")
    p.add_argument("--preset", default="small", help="synthetic preset to generate (small|default|large)")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--num-clips", type=int, default=16)
    p.add_argument("--num-frames", type=int, default=5)
    p.add_argument("--interval", type=int, default=6)
    p.add_argument("--views", type=int, default=2, help="1 = view 1 only; 2 = both (TRAIN.USE_VIEW2)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=6, help="timed batches per worker setting")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (workers use 1)")
    p.add_argument("--srd", action="store_true", help="turn on SRD pseudo anomalies (ADV_TRAIN.PSEUDO_ANOMALY)")
    p.add_argument("--frame-size", default="", metavar="WxH",
                   help="write JPEG folders of this size (e.g. 856x480 as ShanghaiTech, 320x240 as UCF-Crime) "
                        "instead of the synthetic dataset")
    p.add_argument("--videos", type=int, default=8, help="videos of --frame-size folders")
    p.add_argument("--video-frames", type=int, default=120, help="frames per --frame-size video")
    p.add_argument("--json", default="", help="also write the results here")
    return p.parse_args()


def _write_sized_dataset(root, width, height, videos, frames):
    """JPEG folders of ``width x height`` frames that compress like camera frames: a smooth
    random scene (bilinearly upsampled low-resolution noise) with a moving bright block and
    mild sensor noise, quality 90. Returns (train list, description)."""
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(0)
    lines = []
    for v in range(videos):
        folder = root / "frames" / f"v{v:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        scene = torch.rand(1, 3, max(2, height // 24), max(2, width // 24), generator=gen)
        scene = F.interpolate(scene, size=(height, width), mode="bilinear", align_corners=False)[0]
        for i in range(frames):
            img = scene + 0.03 * torch.randn(3, height, width, generator=gen)
            x = (i * 7) % max(1, width - width // 8)
            img[:, height // 3:height // 3 + height // 8, x:x + width // 8] = 0.95
            img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
            (folder / f"img_{i:08}.jpg").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
        lines.append(f"frames/v{v:03d} 0 {frames} {v % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt", f"{videos} JPEG folders of {frames} {width}x{height} frames written by the benchmark"


def _write_plain_dataset(root, videos=12, frames=48, size=64):
    """Fallback data: flat-noise 64x64 JPEG folders and a 4-column train list."""
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(0)
    lines = []
    for v in range(videos):
        folder = root / "frames" / f"v{v:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            img = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
            (folder / f"img_{i:08}.jpg").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
        lines.append(f"frames/v{v:03d} 0 {frames} {v % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt", "plain 64x64 noise frames written by the benchmark"


def _dataset(args, tmp):
    if args.frame_size:
        width, height = (int(v) for v in args.frame_size.lower().split("x"))
        root = Path(tmp) / f"frames_{width}x{height}"
        root.mkdir(parents=True)
        train, what = _write_sized_dataset(root, width, height, args.videos, args.video_frames)
        return root, train, what
    if args.data:
        root = Path(args.data)
        return root, root / "train.txt", f"synthetic dataset at {root}"
    root = Path(tmp) / "synthetic"
    try:
        from datasets.synthetic import make_synthetic_dataset
    except ImportError:
        root.mkdir(parents=True)
        train, what = _write_plain_dataset(root)
        return root, train, what
    paths = make_synthetic_dataset(root, preset=args.preset, seed=0)
    return root, paths["train_list"], f"synthetic dataset, preset {args.preset}"


def _config(args, root, train_list, workers):
    from utils.config import get_default_config

    cfg = get_default_config()
    cfg.DATA.ROOT = str(root)
    cfg.DATA.TRAIN_FILE = str(train_list)
    cfg.DATA.INPUT_SIZE = args.input_size
    cfg.DATA.NUM_CLIPS = args.num_clips
    cfg.DATA.NUM_FRAMES = args.num_frames
    cfg.DATA.FRAME_INTERVAL = args.interval
    cfg.DATA.NUM_VIEWS = args.views
    cfg.TRAIN.USE_VIEW2 = args.views > 1
    cfg.DATA.NUM_WORKERS = workers
    cfg.DATA.PERSISTENT_WORKERS = False
    cfg.TRAIN.BATCH_SIZE = args.batch_size
    cfg.ADV_TRAIN.PSEUDO_ANOMALY = args.srd
    cfg.ADV_TRAIN.SRD_PROB = 1.0
    return cfg


def _raw_decode(dataset, items):
    """Frames/s of batched decode_jpeg on the items' frames (bytes in memory; with reads)."""
    from datasets.sampling import train_clip_indices

    import numpy as np

    files = []
    for vid in items:
        record = dataset.records[vid]
        reader = dataset.reader(vid)
        inds = train_clip_indices(record.num_frames, dataset.num_clips, dataset.num_frames, dataset.interval,
                                  np.random.default_rng(vid))
        files.append([reader.frame_path(int(i)) for i in inds.reshape(-1)])
    blobs = [[torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in item] for item in files]
    n = sum(len(b) for b in blobs)
    decode_jpeg(blobs[0], mode=ImageReadMode.RGB)  # warm-up
    start = time.perf_counter()
    for item in blobs:
        decode_jpeg(item, mode=ImageReadMode.RGB)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    for item in files:
        decode_jpeg([torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in item],
                    mode=ImageReadMode.RGB)
    read_decode_s = time.perf_counter() - start
    return {"frames": n, "decode_fps": n / decode_s, "read_decode_fps": n / read_decode_s}


def _stages(dataset, items):
    """Milliseconds per item for each stage of TrainVideoDataset.__getitem__, in this process."""
    import numpy as np

    from datasets.sampling import train_clip_indices

    totals = {"read_decode": 0.0, "srd": 0.0, "view1_uint8": 0.0, "view2_uint8": 0.0, "whole_item": 0.0}
    distinct = 0
    for vid in items:
        record = dataset.records[vid]
        inds = train_clip_indices(record.num_frames, dataset.num_clips, dataset.num_frames, dataset.interval,
                                  np.random.default_rng(vid))
        t0 = time.perf_counter()
        (frames, inverse), _ = dataset.read_frames(vid, inds.reshape(-1), unique=True)
        distinct += len(frames)
        t1 = time.perf_counter()
        crops = dataset.views[0].apply_uint8_frames(frames)[inverse]  # each frame resized once
        crops = crops.view(dataset.num_clips, dataset.num_frames, *crops.shape[1:])
        t2 = time.perf_counter()
        if dataset.pseudo_anomaly and not record.is_anomalous:  # SRD: draw, paint view 1's crops
            painter = dataset._draw_srd(vid, 0, inds, frames[0].shape[-2:]).painter(crops.shape[-1])
            box = dataset.views[0].crop_box(*frames[0].shape[-2:])
            for c in painter.clips() if painter is not None else ():
                painter.paint(c, crops[c], box)
        t3 = time.perf_counter()
        if len(dataset.views) > 1:
            for c in range(dataset.num_clips):
                clip = inverse[c * dataset.num_frames:(c + 1) * dataset.num_frames].tolist()
                dataset.views[1].apply_uint8(torch.stack([frames[j] for j in clip]))
        t4 = time.perf_counter()
        dataset[(vid, 0)]
        t5 = time.perf_counter()
        for key, value in zip(totals, (t1 - t0, t3 - t2, t2 - t1, t4 - t3, t5 - t4)):
            totals[key] += value
    result = {k: 1000 * v / len(items) for k, v in totals.items()}
    # what the stages above leave out: the copies into the item's uint8 buffer, seeding, keys
    result["rest"] = result["whole_item"] - sum(v for k, v in result.items() if k != "whole_item")
    result["distinct_frames_per_item"] = distinct / len(items)
    return result


def _loader_rate(cfg, batches):
    from datasets.build import build_train_loader, set_loader_epoch

    loader = build_train_loader(cfg)
    set_loader_epoch(loader, 0)
    frames_per_item = cfg.DATA.NUM_CLIPS * cfg.DATA.NUM_FRAMES
    items, timed = 0, 0
    it = iter(loader)
    started = time.perf_counter()
    first = next(it)  # includes worker start-up: not timed
    first_s = time.perf_counter() - started
    start = time.perf_counter()
    while timed < batches:
        try:
            batch = next(it)
        except StopIteration:
            set_loader_epoch(loader, timed + 1)
            it = iter(loader)
            start_up = time.perf_counter()
            batch = next(it)
            start += time.perf_counter() - start_up  # do not time a new epoch's start-up
        items += len(batch["path"])
        timed += 1
    elapsed = time.perf_counter() - start
    del first, it
    workers = cfg.DATA.NUM_WORKERS
    total = items / elapsed
    return {"workers": workers, "items": items, "seconds": elapsed, "first_batch_s": first_s,
            "items_per_s": total, "frames_per_s": total * frames_per_item,
            "items_per_s_per_worker": total / max(workers, 1),
            "frames_per_s_per_worker": total * frames_per_item / max(workers, 1)}


def _interleaved_share(cfg, batches):
    """The 0-worker loader against the raw decode of the very frames each batch holds,
    interleaved batch by batch in this process (machine noise hits both alike): the share of
    the raw decode rate the loader delivers = raw seconds / loader seconds over the batches."""
    from datasets.build import build_train_loader, set_loader_epoch

    loader = build_train_loader(cfg)
    set_loader_epoch(loader, 0)
    dataset = loader.dataset
    it = iter(loader)
    next(it)  # warm-up
    loader_s = raw_s = 0.0
    rounds = []
    for _ in range(batches):
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            start = time.perf_counter()
            batch = next(it)
        took = time.perf_counter() - start
        files = [dataset.reader(int(v)).frame_path(int(i))
                 for v, inds in zip(batch["vid"], batch["frame_inds"]) for i in inds.reshape(-1)]
        start = time.perf_counter()
        decode_jpeg([torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files],
                    mode=ImageReadMode.RGB)
        raw = time.perf_counter() - start
        loader_s, raw_s = loader_s + took, raw_s + raw
        rounds.append({"loader_s": took, "raw_s": raw, "frames": len(files)})
    return {"share_of_raw": raw_s / loader_s, "loader_s": loader_s, "raw_s": raw_s, "rounds": rounds}


def main():
    args = _args()
    torch.set_num_threads(args.threads)
    from datasets.lists import parse_list_file
    from datasets.video_dataset import TrainVideoDataset

    with tempfile.TemporaryDirectory() as tmp:
        root, train_list, what = _dataset(args, tmp)
        cfg = _config(args, root, train_list, 0)
        dataset = TrainVideoDataset(parse_list_file(train_list, kind="train"), cfg, str(train_list))
        items = list(range(min(len(dataset), 8)))
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                       f"{args.threads}",
            "data": what, "videos": len(dataset),
            "settings": {k: getattr(args, k) for k in ("input_size", "num_clips", "num_frames", "interval",
                                                        "views", "batch_size", "batches", "srd")},
            "raw_decode": _raw_decode(dataset, items),
            "stage_ms_per_item": _stages(dataset, items),
            "loader": [_loader_rate(_config(args, root, train_list, w), args.batches) for w in args.workers],
            "interleaved": _interleaved_share(_config(args, root, train_list, 0), args.batches),
        }
    raw = result["raw_decode"]
    print(f"{what}; {result['machine']}")
    print(f"raw JPEG decode (batched, bytes in memory): {raw['decode_fps']:.0f} frames/s; "
          f"with file reads: {raw['read_decode_fps']:.0f} frames/s ({raw['frames']} frames)")
    print("one item in-process, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in result["stage_ms_per_item"].items()))
    print("| workers | items/s | decoded frames/s | items/s per worker | frames/s per worker | first batch s |")
    print("|---|---|---|---|---|---|")
    for r in result["loader"]:
        print(f"| {r['workers']} | {r['items_per_s']:.2f} | {r['frames_per_s']:.0f} | "
              f"{r['items_per_s_per_worker']:.2f} | {r['frames_per_s_per_worker']:.0f} | {r['first_batch_s']:.2f} |")
    share = result["interleaved"]
    print(f"0 workers, interleaved with the raw decode (with reads) of each batch's own frames: "
          f"{100 * share['share_of_raw']:.0f} % of the raw decode rate")
    if args.json:
        from utils.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
