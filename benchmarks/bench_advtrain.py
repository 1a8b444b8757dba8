"""Cheaper adversarial training at equal robustness: stage 2 of the demo under each inner-attack setting.

For every seed, the demo's own stages (apps.demo_stages.plan_stages) give the stage-1
baseline and the pseudo labels; FrameShield (pseudo labels + SRD, configs/synthetic/
demo_advtrain.yaml) is then trained once per setting of ``SETTINGS`` from that same baseline,
and every trained model is attacked with PGD-10 and APGD-CE (20 steps) at the demo's evaluation budget
(configs/synthetic/demo_attack.yaml). Reported per setting: stage-2 wall time (and its ratio
to the published PGD-3 training of the same seed), forward+backward passes per training
step (machine-independent), clean / PGD-10 / APGD-CE AUC@all, and the overfitting checks.

Stages are run by the demo's runner (resumable: run the same command again to continue);
``--jobs 2`` runs two stages side by side (one thread each), so settings compared in one
run share the machine's load. Times are wall times on a shared machine: read the ratios.

Run: ``python -m benchmarks.bench_advtrain --seeds 0 1 2 [--preset variant] [--only pgd3 fgsm_rs]``
Writes OUTPUT/results.json and OUTPUT/results.md (default OUTPUT: output/bench_advtrain_<preset>).

``--step-timing``: instead, the cost of one stage-2 training step (attack + forward + backward
+ AdamW) of every setting, timed interleaved in this process (pgd3, fgsm_rs, ..., pgd3, ...)
on one real training batch of the demo's loader with the demo's model: the machine-noise-free
ratio to the published step. (The whole-run times above share the machine with whatever else
runs; the per-epoch overfitting check is left out here: it costs its steps on one batch.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from apps.demo import ensure_dataset  # noqa: E402
from apps.demo_stages import DemoStage, DemoState, Runner, data_root_for, plan_stages  # noqa: E402

# name -> (--opts on top of the demo's FrameShield stage, forward+backward passes per step, description)
# The demo trains on half adversarial, half clean clips from one forward of a double batch (CLEAN_WEIGHT
# 0.5), so its update costs 2 passes of the batch; each attack step costs 1.
SETTINGS = {
    "pgd3": ((), 3 + 2, "published PGD (the demo: 3 steps of 2.5 eps / 3 from the clean clip)"),
    "fgsm_rs": (("ATTACK.STEPS", 1, "ADV_TRAIN.ATTACK_INIT", "uniform", "ADV_TRAIN.ATTACK_STEP_SIZE", 2.5,
                 "ADV_TRAIN.OVERFIT_CHECK_STEPS", 10), 1 + 2, "FGSM with random start, step 1.25 eps (Wong et al.)"),
    "previous1": (("ATTACK.STEPS", 1, "ADV_TRAIN.ATTACK_INIT", "previous", "ADV_TRAIN.ATTACK_STEP_SIZE", 2.0,
                   "ADV_TRAIN.OVERFIT_CHECK_STEPS", 10), 1 + 2, "1 step of eps from the video's last perturbation"),
    "free": (("ATTACK.STEPS", 0, "ADV_TRAIN.ATTACK_INIT", "previous", "ADV_TRAIN.FREE_UPDATE", True,
              "ADV_TRAIN.OVERFIT_CHECK_STEPS", 10), 0 + 2, "no attack pass: the training backward moves the memory"),
    "ramp": (("ADV_TRAIN.ATTACK_SCHEDULE", "ramp", "ADV_TRAIN.OVERFIT_CHECK_STEPS", 10), None,
             "PGD steps 1 -> 3 over the epochs"),
}
ATTACKS = {"pgd10": (), "apgd_ce": ("ROBUSTNESS.ATTACK", "apgd-ce", "ATTACK.STEPS", 20)}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default", help="demo preset (default, variant, fast, ...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--output", default="", help="default: output/bench_advtrain_<preset>")
    p.add_argument("--jobs", type=int, default=2, help="stages side by side (CPU threads split between them)")
    p.add_argument("--step-timing", action="store_true", help="time one training step per setting, interleaved")
    p.add_argument("--rounds", type=int, default=10, help="--step-timing: timed rounds")
    p.add_argument("--threads", type=int, default=2, help="--step-timing: torch threads")
    return p.parse_args(argv)


def plan(preset: str, seeds, output: Path, data_root: Path, settings) -> list[DemoStage]:
    """Baseline + pseudo labels of the demo, then per setting a FrameShield training and two attacks."""
    demo = {s.key: s for s in plan_stages(preset, seeds, output, data_root, 0)}
    stages = []
    for seed in seeds:
        stages += [demo[f"seed{seed}/baseline"], demo[f"seed{seed}/pseudo_labels"]]
        frameshield, attack = demo[f"seed{seed}/frameshield"], demo[f"seed{seed}/attack_frameshield"]
        for name in settings:
            key = f"seed{seed}/adv_{name}"
            trained = replace(frameshield, key=key, output=frameshield.output.parent / f"adv_{name}",
                              opts=frameshield.opts + list(SETTINGS[name][0]))
            stages.append(trained)
            for attack_name, opts in ATTACKS.items():
                stages.append(replace(attack, key=f"{key}/{attack_name}",
                                      output=trained.output.parent / f"attack_{name}_{attack_name}",
                                      opts=attack.opts + list(opts),
                                      pretrained=trained.output / "checkpoints" / "best.safetensors", deps=[key]))
    return stages


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def collect(output: Path, seeds, settings, state: DemoState) -> dict:
    rows = {}
    for name in settings:
        per_seed = []
        for seed in seeds:
            root = output / f"seed{seed}"
            trained = _read(root / f"adv_{name}" / "results.json")
            row = {"seed": seed, "stage2_s": state.stages.get(f"seed{seed}/adv_{name}", {}).get("seconds"),
                   "overfit_flags": sum(bool(c.get("overfitting")) for c in trained.get("overfit_checks", []))}
            for attack_name in ATTACKS:
                result = _read(root / f"attack_{name}_{attack_name}" / "results.json")
                row["clean"] = result.get("clean", {}).get("auc_all", row.get("clean"))
                row[attack_name] = result.get("adversarial", {}).get("auc_all")
            reference = state.stages.get(f"seed{seed}/adv_pgd3", {}).get("seconds")
            row["time_ratio"] = row["stage2_s"] / reference if row["stage2_s"] and reference else None
            per_seed.append(row)
        rows[name] = {"description": SETTINGS[name][2], "passes_per_step": SETTINGS[name][1], "seeds": per_seed}
        for metric in ("stage2_s", "time_ratio", "clean", "pgd10", "apgd_ce"):
            values = [r[metric] for r in per_seed if r.get(metric) is not None]
            rows[name][metric] = statistics.fmean(values) if values else None
    return rows


def markdown(rows: dict, preset: str, seeds) -> str:
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"Preset `{preset}`, seeds {seeds} (means); AUC@all; attacks at the demo's budget (2/255).", "",
             "| setting | passes/step | stage-2 s | time vs pgd3 | clean | PGD-10 | APGD-CE | overfit warnings |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        flags = sum(r["overfit_flags"] for r in row["seeds"])
        lines.append(f"| `{name}`: {row['description']} | {row['passes_per_step'] or '2-5'} | {f(row['stage2_s'], 0)} "
                     f"| {f(row['time_ratio'], 2)} | {f(row['clean'])} | {f(row['pgd10'])} | {f(row['apgd_ce'])} "
                     f"| {flags} |")
    lines += ["", "Per seed (clean / PGD-10 / APGD-CE, stage-2 s):", ""]
    for name, row in rows.items():
        cells = [f"seed {r['seed']}: {f(r.get('clean'))} / {f(r.get('pgd10'))} / {f(r.get('apgd_ce'))}, "
                 f"{f(r['stage2_s'], 0)} s" for r in row["seeds"]]
        lines.append(f"- `{name}`: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def step_timing(preset: str, settings, rounds: int, threads: int) -> dict:
    """Median seconds per training step of each setting, timed round-robin on one batch."""
    import time

    import torch

    from datasets.build import build_train_loader, set_loader_epoch
    from training import engine, steps
    from training.adv_attack import TrainAttack
    from training.stage import class_tokens, load_model
    from utils.config import load_config_file, merge_opts

    torch.set_num_threads(threads)
    data_root = data_root_for(preset)
    base = load_config_file(REPO / "configs" / "synthetic" / "demo_advtrain.yaml")
    base.defrost()
    merge_opts(base, ["DATA.ROOT", str(data_root), "DATA.TRAIN_FILE", str(data_root / "train_fit.txt"),
                      "DATA.NUM_WORKERS", "0", "ADV_TRAIN.PSEUDO_LABEL", "False"])
    loader = build_train_loader(base)
    set_loader_epoch(loader, 0)
    batch = next(iter(loader))
    tokens = class_tokens(base, "cpu")
    runs = {}
    for name in settings:
        cfg = base.clone()
        merge_opts(cfg, [str(v) for v in SETTINGS[name][0]])
        model = load_model(cfg, None, torch.device("cpu"), None).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.TRAIN.LR)
        runs[name] = (cfg, model, optimizer, steps.make_advtrain_step(None, TrainAttack(cfg)))
    times = {name: [] for name in settings}
    for r in range(rounds + 1):  # round 0 warms up (and fills the perturbation memory)
        for name, (cfg, model, optimizer, step) in runs.items():
            start = time.perf_counter()
            micro = engine.MicroStep(True, True, optimizer, epoch=cfg.TRAIN.EPOCHS - 1, index=1)
            loss, _ = step(model, batch, tokens, cfg, torch.device("cpu"), micro)
            loss.backward()
            optimizer.step()
            if r:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {name: {"step_s": medians[name], "ratio_to_pgd3": medians[name] / medians["pgd3"],
                   "passes_per_step": SETTINGS[name][1]} for name in settings}


def main(argv=None) -> int:
    args = _args(argv)
    if args.step_timing:
        from utils.io import atomic_write_json

        rows = step_timing(args.preset, ["pgd3"] + [s for s in args.only if s != "pgd3"], args.rounds, args.threads)
        lines = ["| setting | s/step (median) | vs pgd3 | passes/step |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {r['step_s']:.3f} | {r['ratio_to_pgd3']:.2f} | {r['passes_per_step'] or '2-5'} |"
                  for n, r in rows.items()]
        print("\n".join(lines))
        if args.output:
            atomic_write_json(Path(args.output) / "step_timing.json", {"preset": args.preset, "rounds": args.rounds,
                                                                       "threads": args.threads, "settings": rows})
        return 0
    import os

    from utils.io import atomic_write_json, atomic_write_text

    settings = ["pgd3"] + [s for s in args.only if s != "pgd3"]  # the reference is always run
    output = Path(args.output or f"output/bench_advtrain_{args.preset}").resolve()
    output.mkdir(parents=True, exist_ok=True)
    data_root = data_root_for(args.preset)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    runner = Runner(output, 0, max(1, args.jobs), threads, cpu_only=True)
    ensure_dataset(args.preset, data_root, runner.say)
    state = DemoState(output / "demo_state.json")
    runner.run(plan(args.preset, args.seeds, output, data_root, settings), state)
    rows = collect(output, args.seeds, settings, state)
    atomic_write_json(output / "results.json", {"preset": args.preset, "seeds": args.seeds, "settings": rows})
    text = markdown(rows, args.preset, args.seeds)
    atomic_write_text(output / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
