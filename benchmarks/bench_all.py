"""All FrameShield throughput numbers on the current device, in one run.

    python benchmarks/bench_all.py [--quick] [--json out.json] [--presets tiny ViT-B/32]
    bash runners/bench.sh                     # the same, with the JSON in output/bench/

Measures (reusing bench_model.py, bench_srd.py and bench_loader.py):

1. train step (forward + backward + AdamW, text tower frozen) of each model preset on one
   training video of 16 clips x 5 frames (N = 16 clips; ``--cpu-clips`` on a CPU for the
   large presets, whose full video takes minutes there): clips/s and peak memory
   (CUDA: peak allocated; CPU: process peak RSS); on CUDA in bf16 autocast and in fp32;
2. PGD attack throughput: attacked clips/s of attacks.pgd.pgd with 10 steps;
3. SRD: ms per call and per frame on a 16 x 5 uint8 item at 224 px (datasets.srd);
4. training loader: items/s of datasets.build.build_train_loader on the small synthetic
   dataset at 224 px, 16 x 5 frames, view 1 only, for 0 and 2 worker processes.

Prints a Markdown table per part. Not a test: numbers depend on the machine and its load.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_loader  # noqa: E402
import bench_model  # noqa: E402
import bench_srd  # noqa: E402
from clip import tokenize  # noqa: E402
from models import xclip  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads, "
            f"load average {load:.1f} at start (torch {torch.__version__})")


def train_steps(presets, device, clips, frames, steps, warmup, dtypes):
    rows = []
    for name in presets:
        n = clips(name)
        for dtype in dtypes:
            args = argparse.Namespace(batch=n, frames=frames, steps=steps, warmup=warmup, checkpoint=False)
            started = time.perf_counter()
            row = bench_model.bench_preset(name, args, device, dtype)
            row.update(precision="bf16" if dtype is not None else "fp32", seconds=time.perf_counter() - started)
            rows.append(row)
            print(f"  train {name} {row['precision']} N={n}: {row['train_clips_per_s']:.2f} clips/s", flush=True)
    return rows


def pgd_throughput(presets, device, clips, frames, steps, dtypes, repeats=2, warmup=1):
    from attacks.pgd import pgd

    rows = []
    for name in presets:
        n = clips(name)
        torch.manual_seed(0)
        model, _, _ = xclip.load(None, name, device=device, T=frames)
        model.eval()
        size = model.input_resolution
        videos = torch.rand(n, frames, 3, size, size, device=device)
        labels = torch.arange(n, device=device) % 2
        tokens = tokenize(["normal", "abnormal"]).to(device)
        for dtype in dtypes:
            amp = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

            def attack():
                with amp:
                    pgd(model, videos, tokens, labels, eps=4 / 255, steps=steps)

            seconds = bench_model.time_steps(attack, repeats, warmup, device)
            rows.append({"preset": name, "clips": n, "frames": frames, "steps": steps,
                         "precision": "bf16" if dtype is not None else "fp32",
                         "attacked_clips_per_s": n / seconds})
            print(f"  pgd {name} {rows[-1]['precision']}: {rows[-1]['attacked_clips_per_s']:.2f} clips/s", flush=True)
    return rows


def srd_cost(repeats):
    wall, cpu = bench_srd.bench_srd(16, 5, 224, torch.uint8, False, repeats)
    return {"clips": 16, "frames": 5, "size": 224, "ms_per_call": wall, "cpu_ms_per_call": cpu,
            "ms_per_frame": wall / 80, "cpu_ms_per_frame": cpu / 80}


def loader_rate(workers, batches):
    from datasets.synthetic import make_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_synthetic_dataset(Path(tmp) / "synthetic", preset="small", seed=0)
        args = argparse.Namespace(input_size=224, num_clips=16, num_frames=5, interval=6, views=1,
                                  batch_size=1, srd=False)
        for w in workers:
            cfg = bench_loader._config(args, paths["root"], paths["train_list"], w)
            rows.append(bench_loader._loader_rate(cfg, batches))
            print(f"  loader {w} workers: {rows[-1]['items_per_s']:.2f} items/s", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "ViT-B/32"])
    parser.add_argument("--clips", type=int, default=16, help="clips per training video (N)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--cpu-clips", type=int, default=2,
                        help="N for presets other than tiny on a CPU (a 16-clip ViT-B/32 step takes minutes)")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps (after 1 warm-up)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a rough look)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [torch.bfloat16, None] if device.type == "cuda" else [None]

    def clips(name):
        return args.clips if device.type == "cuda" or name == "tiny" else args.cpu_clips

    print(f"device: {machine(device)}", flush=True)
    started = time.time()
    result = {"device": machine(device), "torch": torch.__version__}
    result["train"] = train_steps(args.presets, device, clips, args.frames, 1 if args.quick else args.steps, 1,
                                  dtypes)
    result["pgd"] = pgd_throughput(args.presets, device, clips, args.frames, 10, dtypes,
                                   repeats=1 if args.quick else 2, warmup=0 if args.quick else 1)
    result["srd"] = srd_cost(10 if args.quick else 40)
    result["loader"] = loader_rate([0, 2], 4 if args.quick else 12)
    result["seconds"] = time.time() - started

    memory = "peak allocated" if device.type == "cuda" else "process peak RSS"
    print(f"\ndevice: {result['device']}\n")
    print(f"| preset | precision | clips x frames | train clips/s | {memory} (MiB) | PGD-10 attacked clips/s |")
    print("|---|---|---|---|---|---|")
    for t, p in zip(result["train"], result["pgd"]):
        print(f"| {t['preset']} | {t['precision']} | {t['batch']} x {t['frames']} | {t['train_clips_per_s']:.2f} | "
              f"{t['train_peak_mib']:.0f} | {p['attacked_clips_per_s']:.2f} |")
    s = result["srd"]
    print(f"\nSRD (16 x 5 frames, 224 px, uint8): {s['ms_per_call']:.1f} ms per call, "
          f"{s['ms_per_frame']:.3f} ms per frame (process CPU {s['cpu_ms_per_frame']:.3f} ms per frame)")
    print("\n| loader workers | items/s (16 x 5 frames, 224 px) | frames/s |")
    print("|---|---|---|")
    for row in result["loader"]:
        print(f"| {row['workers']} | {row['items_per_s']:.2f} | {row['frames_per_s']:.0f} |")
    print(f"\n(total {result['seconds']:.0f} s)")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
