"""Throughput and peak memory of X-CLIP forward and forward+backward on this device.

Usage: python benchmarks/bench_model.py [--presets ViT-B/32 tiny] [--batch 2] [--frames 5]
       [--steps 5] [--warmup 2] [--checkpoint] [--json PATH]
On CUDA the model runs under bf16 autocast (as training with TRAIN.AMP bf16 does); on CPU in
float32. Prints a markdown table; ``--json`` also writes the numbers. Not a test.
"""
import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip import tokenize  # noqa: E402
from models import xclip  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, warmup: int, device) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_preset(name, args, device, autocast_dtype) -> dict:
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, name, device=device, T=args.frames,
                             use_checkpoint=args.checkpoint)
    size = model.input_resolution
    video = torch.rand(args.batch, args.frames, 3, size, size, device=device)
    tokens = tokenize(["normal", "abnormal"]).to(device)
    labels = torch.arange(args.batch, device=device) % 2
    amp = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def forward():
        with torch.no_grad(), amp:
            model(video, tokens)

    def train_step():
        with amp:
            loss = F.cross_entropy(model(video, tokens)["y"].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    fwd_s = time_steps(forward, args.steps, args.warmup, device)
    fwd_mem = peak_memory_mib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_s = time_steps(train_step, args.steps, args.warmup, device)
    train_mem = peak_memory_mib(device)
    return {
        "preset": name, "batch": args.batch, "frames": args.frames, "resolution": size,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "forward_clips_per_s": args.batch / fwd_s,
        "train_clips_per_s": args.batch / train_s,
        "forward_peak_mib": fwd_mem, "train_peak_mib": train_mem,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["ViT-B/32", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    rows = [bench_preset(name, args, device, autocast_dtype) for name in args.presets]
    precision = "bf16 autocast" if autocast_dtype else "float32"
    memory_kind = "peak allocated" if device.type == "cuda" else "process peak RSS"
    print(f"device: {device_description(device)}; torch {torch.__version__}; {precision}; "
          f"batch {args.batch} clips x {args.frames} frames; checkpointing {args.checkpoint}")
    print(f"| preset | params (M) | forward clips/s | fwd+bwd clips/s | "
          f"forward {memory_kind} (MiB) | fwd+bwd {memory_kind} (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['params_m']:.1f} | {r['forward_clips_per_s']:.2f} | "
              f"{r['train_clips_per_s']:.2f} | {r['forward_peak_mib']:.0f} | "
              f"{r['train_peak_mib']:.0f} |")
    if args.json:
        atomic_write_json(args.json, {
            "device": device_description(device), "torch": torch.__version__,
            "precision": precision, "memory": memory_kind,
            "checkpointing": args.checkpoint, "results": rows})


if __name__ == "__main__":
    main()
