"""The GPU check: every hot path in fp32 and bf16 autocast, and a short pipeline run in both.

    bash runners/gpu_check.sh [--out output/gpu_check] [--quick]

Meant for one GPU and under 5 minutes; it runs on a CPU too (bf16 autocast there is a
no-op for training, so the pipeline check only checks the plumbing). One JSON,
``OUT/gpu_check.json``, holds:

- ``train``: forward + backward + AdamW clips/s and peak memory of tiny and ViT-B/32 on one
  training video (16 clips x 5 frames), fp32 and bf16 (bench_all.train_steps);
- ``pgd``: PGD-10 attacked clips/s, fp32 and bf16;
- ``srd``: SRD ms per 16 x 5 item at 224 px; ``loader``: training-loader items/s, 0 and 2 workers;
- ``infer``: test segments/s of evaluation.scoring.evaluate (the scoring every stage uses) for
  ViT-B/32 at 224 px, fp32 and bf16;
- ``pipeline``: main.py for 2 epochs of the tiny model on the small synthetic set with
  TRAIN.AMP none and bf16: best clean AUC@all of each and their difference (goal: <= 0.01);
- ``summary``: the ratios to read first: ``bf16_train_speedup_b32`` (goal >= 3x) and
  ``pipeline_auc_gap`` (goal <= 0.01).

Not a test: numbers depend on the machine. docs/BENCHMARKS.md says how to read them.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_all  # noqa: E402
from utils.io import atomic_write_json  # noqa: E402


def infer_rate(device, dtypes, data, preset="ViT-B/32", input_size=224):
    """Segments/s of the evaluation's scoring pass over the synthetic test list."""
    from clip import tokenize
    from datasets.build import build_test_loader
    from evaluation.scoring import evaluate
    from models import xclip
    from utils.config import get_default_config

    torch.manual_seed(0)
    model, _, _ = xclip.load(None, preset, device=device, T=5)
    model.eval()
    tokens = tokenize(["normal", "abnormal"]).to(device)
    rows = []
    for dtype in dtypes:
        precision = "bf16" if dtype is not None else "fp32"
        cfg = get_default_config()
        cfg.DATA.ROOT, cfg.DATA.VAL_FILE = str(data["root"]), str(data["test_list"])
        cfg.DATA.INPUT_SIZE, cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL = input_size, 5, 2
        cfg.DATA.NUM_WORKERS, cfg.TEST.BATCH_SIZE = 2, 16
        cfg.TRAIN.AMP = "bf16" if dtype is not None else "none"
        cfg.freeze()
        loader = build_test_loader(cfg)
        result = evaluate(model, loader, tokens, cfg, _Quiet(), desc=f"infer {precision}")
        rows.append({"preset": preset, "precision": precision, "segments_per_s": result["segments_per_s"],
                     "auc_all": result["metrics"]["auc_all"]})
        print(f"  infer {preset} {precision}: {rows[-1]['segments_per_s']:.1f} segments/s", flush=True)
    return rows


class _Quiet:
    def info(self, *args):
        pass

    warning = info


def pipeline_check(data, out, epochs=2, amps=("none", "bf16")):
    """main.py on the small synthetic set in fp32 and bf16: best clean AUC@all of each."""
    rows = {}
    for amp in amps:
        folder = out / f"pipeline_{amp}"
        cmd = [sys.executable, str(REPO / "main.py"), "-cfg", str(REPO / "configs/synthetic/demo_train.yaml"),
               "--output", str(folder), "--overwrite", "--opts", "DATA.ROOT", str(data["root"]),
               "DATA.TRAIN_FILE", str(data["train_fit_list"]), "DATA.VAL_FILE", str(data["test_list"]),
               "DATA.VAL_SPLIT_FILE", str(data["val_list"]),
               "TRAIN.EPOCHS", str(epochs), "TRAIN.AMP", amp, "MODEL.ARCH", "tiny", "DATA.INPUT_SIZE", "64"]
        started = time.time()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline run ({amp}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        results = json.loads((folder / "results.json").read_text())
        rows[amp] = {"auc_all": results["best"]["auc_all"], "seconds": time.time() - started}
        print(f"  pipeline {amp}: best AUC@all {rows[amp]['auc_all']:.4f} in {rows[amp]['seconds']:.0f} s", flush=True)
    if "bf16" in rows and "none" in rows:
        rows["auc_gap"] = abs(rows["bf16"]["auc_all"] - rows["none"]["auc_all"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "output" / "gpu_check")
    parser.add_argument("--quick", action="store_true", help="one timed repeat per measurement")
    parser.add_argument("--presets", nargs="+", default=["tiny", "ViT-B/32"],
                        help="model presets of the throughput parts (the summary's speedup needs ViT-B/32)")
    args = parser.parse_args(argv)

    from datasets.synthetic import make_synthetic_dataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = [None, torch.bfloat16]
    presets = args.presets
    clips = (lambda name: 16) if device.type == "cuda" else (lambda name: 16 if name == "tiny" else 2)
    steps = 1 if args.quick else 3
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = {"device": bench_all.machine(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"device: {result['device']}", flush=True)
    result["train"] = bench_all.train_steps(presets, device, clips, 5, steps, 1, dtypes)
    result["pgd"] = bench_all.pgd_throughput(presets, device, clips, 5, 10, dtypes, repeats=1 if args.quick else 2)
    result["srd"] = bench_all.srd_cost(10 if args.quick else 40)
    result["loader"] = bench_all.loader_rate([0, 2], 4 if args.quick else 12)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "synthetic", preset="small", seed=0)
        big = "ViT-B/32" if "ViT-B/32" in presets else presets[0]
        result["infer"] = infer_rate(device, dtypes, data, preset=big, input_size=224 if big != "tiny" else 64)
        result["pipeline"] = pipeline_check(data, args.out)
    b32 = {r["precision"]: r["train_clips_per_s"] for r in result["train"] if r["preset"] == "ViT-B/32"}
    result["summary"] = {
        "bf16_train_speedup_b32": b32["bf16"] / b32["fp32"] if b32 else None,
        "bf16_train_speedup_goal": 3.0,
        "pipeline_auc_gap": result["pipeline"]["auc_gap"],
        "pipeline_auc_gap_goal": 0.01,
        "bf16_autocast_applies": device.type == "cuda",
    }
    result["seconds"] = time.time() - started
    atomic_write_json(args.out / "gpu_check.json", result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out / 'gpu_check.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
