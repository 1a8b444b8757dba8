"""Throughput and peak memory of X-CLIP forward and forward+backward on this device.

Usage: python benchmarks/bench_model.py [--presets ViT-B/32 tiny] [--batch 2] [--frames 5]
       [--steps 5] [--warmup 2] [--checkpoint] [--json PATH] [--baseline [--repeats 5]]
On CUDA the model runs under bf16 autocast (as training with TRAIN.AMP bf16 does); on CPU in
float32. Prints a markdown table; ``--json`` also writes the numbers. Not a test.

``--baseline``: this model side by side with a plain-math reference of the same
architecture and the same weights, written here in the published formulation (sequences
``[L, N, D]`` as nn.MultiheadAttention takes them, per-head attention with an explicit
softmax, no SDPA). The two are timed interleaved (ours, reference, ours, ...) in one process,
``--repeats`` rounds of ``--steps`` calls each, so machine noise hits both alike; the table
gives the median ratio reference time / our time (> 1 = ours faster) and the largest logit
difference (must be < 1e-5). The optimizer step is training.optim.build_optimizer's AdamW:
fused for ours (TRAIN.FUSED_OPTIMIZER, the default), torch's default implementation for the
reference.
"""
import copy
import statistics
import types
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
from training.optim import build_optimizer  # noqa: E402
from utils.config import get_default_config  # noqa: E402
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


# ----------------------------------------------------------------------------- plain-math reference
def _reference_self_attention(self, x, causal=False):
    """clip.model.SelfAttention in the published formulation: x [N, L, D] -> [N, L, D]."""
    n, length, width = x.shape
    heads, dim = self.heads, width // self.heads
    seq = x.transpose(0, 1)  # [L, N, D], the layout the published blocks keep
    q, k, v = F.linear(seq, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
    q = q.reshape(length, n * heads, dim).transpose(0, 1) * dim ** -0.5  # [N*h, L, d]
    k = k.reshape(length, n * heads, dim).transpose(0, 1)
    v = v.reshape(length, n * heads, dim).transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2))  # [N*h, L, L]
    if causal:
        scores = scores + torch.full((length, length), float("-inf"), device=x.device).triu(1)
    out = torch.bmm(scores.softmax(dim=-1), v)  # [N*h, L, d]
    out = out.transpose(0, 1).reshape(length, n, width)
    return self.out_proj(out).transpose(0, 1)


def _reference_cross_attention(self, query, key, value):
    """models.prompt.CrossAttention with an explicit softmax: [B, C, D] over [B, P, D]."""
    b, n, d = query.shape
    q, k, v = (self._split(f(t)) for f, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
    scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5
    out = scores.softmax(dim=-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


def reference_model(model):
    """A deep copy of ``model`` whose attention modules compute the published plain math."""
    from clip.model import SelfAttention
    from models.prompt import CrossAttention

    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, SelfAttention):
            module.forward = types.MethodType(_reference_self_attention, module)
        elif isinstance(module, CrossAttention):
            module.forward = types.MethodType(_reference_cross_attention, module)
    return ref


def bench_baseline(name, args, device) -> dict:
    """Ours vs the plain-math reference, interleaved: median time ratios and the logit gap."""
    torch.manual_seed(0)
    ours, _, _ = xclip.load(None, name, device=device, T=args.frames)
    ref = reference_model(ours)
    size = ours.input_resolution
    video = torch.rand(args.batch, args.frames, 3, size, size, device=device)
    tokens = tokenize(["normal", "abnormal"]).to(device)
    labels = torch.arange(args.batch, device=device) % 2
    ours.eval(), ref.eval()
    with torch.no_grad():
        gap = float((ours(video, tokens)["y"] - ref(video, tokens)["y"]).abs().max())

    def make(model, fused):
        # training.optim.build_optimizer's AdamW groups: ours with TRAIN.FUSED_OPTIMIZER (the
        # default), the reference with torch's default AdamW implementation, as published
        cfg = get_default_config()
        cfg.defrost()
        cfg.TRAIN.FUSED_OPTIMIZER = fused
        optimizer = build_optimizer(cfg, model)

        def forward():
            with torch.no_grad():
                model(video, tokens)

        def train_step():
            loss = F.cross_entropy(model(video, tokens)["y"].float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return forward, train_step

    contestants = {"ours": make(ours, True), "ref": make(ref, False)}
    extra = {}
    if args.compile:  # torch.compile of our model (same parameters): the first calls compile
        compiled = torch.compile(ours)
        contestants["compiled"] = make(compiled, True)
        start = time.perf_counter()
        ours.eval()
        with torch.no_grad():
            extra["compiled_max_logit_diff"] = float((compiled(video, tokens)["y"] - ref(video, tokens)["y"]).abs().max())
        ours.train()
        contestants["compiled"][1]()
        extra["compile_s"] = time.perf_counter() - start
    times = {f"{who}_{kind}": [] for who in contestants for kind in ("fwd", "train")}
    for _ in range(args.repeats):
        for kind, index, mode in (("fwd", 0, False), ("train", 1, True)):
            for who, steps in contestants.items():
                for model in (ours, ref):
                    model.train(mode)
                times[f"{who}_{kind}"].append(time_steps(steps[index], args.steps, args.warmup, device))
    ratio = {f"{who}_{kind}": statistics.median(r / o for r, o in zip(times[f"ref_{kind}"], times[f"{who}_{kind}"]))
             for who in contestants if who != "ref" for kind in ("fwd", "train")}
    if args.compile:
        extra |= {"compiled_forward_ratio": ratio["compiled_fwd"], "compiled_train_ratio": ratio["compiled_train"]}
    return {"preset": name, "threads": torch.get_num_threads(), "batch": args.batch, "frames": args.frames,
            "max_logit_diff": gap, "forward_ratio": ratio["ours_fwd"], "train_ratio": ratio["ours_train"],
            **extra, "times_s": times}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["ViT-B/32", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--baseline", action="store_true",
                        help="time against the plain-math reference of the published formulation")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of --baseline")
    parser.add_argument("--compile", action="store_true",
                        help="--baseline: also time torch.compile of our model (compile time reported apart)")
    args = parser.parse_args(argv)

    if args.baseline:
        device = torch.device("cpu")
        rows = [bench_baseline(name, args, device) for name in args.presets]
        print(f"device: {device_description(device)}; torch {torch.__version__}; float32; batch {args.batch} "
              f"clips x {args.frames} frames; {args.repeats} interleaved rounds of {args.steps} steps")
        print("| preset | threads | max logit diff | forward: reference / ours | fwd+bwd: reference / ours |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['preset']} | {r['threads']} | {r['max_logit_diff']:.1e} | {r['forward_ratio']:.2f}x | "
                  f"{r['train_ratio']:.2f}x |")
            if "compile_s" in r:
                print(f"|   compiled ({r['compile_s']:.0f} s to compile) | {r['threads']} | "
                      f"{r['compiled_max_logit_diff']:.1e} | {r['compiled_forward_ratio']:.2f}x | "
                      f"{r['compiled_train_ratio']:.2f}x |")
        if args.json:
            atomic_write_json(args.json, {"device": device_description(device), "torch": torch.__version__,
                                          "mode": "baseline", "results": rows})
        return

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
