"""The quick-start demo: every FrameShield stage on the embedded synthetic dataset.

``python demo.py`` (or ``bash runners/demo.sh``) runs, for each seed:

1. the synthetic dataset (``datasets.synthetic``; generated once, reused when present),
2. ``baseline``: clean PromptMIL training of the tiny X-CLIP (main.py; tested every epoch,
   the best epoch kept),
3. ``pseudo_labels``: clip pseudo labels from the baseline (main_advtrain.py --only_test),
4. ``frameshield``: PGD adversarial training on pseudo labels + SRD pseudo anomalies, and
   the ablations ``pl_only`` (pseudo labels, no SRD) and ``srd_only`` (SRD, video labels
   for anomalous videos), all started from the baseline (main_advtrain.py),
5. ``attack_<model>``: the same PGD attack on every model (main_attack.py),

then writes ``OUTPUT/summary.json``, ``summary.md`` and ``plots/`` (ROC curves, score
curves of test videos clean vs attacked, an SRD example strip).

Every stage is a subprocess of the entry script (through the runners/*.sh launchers and
torchrun on all GPUs when CUDA is present; a plain single process per stage on a CPU), its
console output going to ``OUTPUT/logs/<seed>_<stage>.log`` while this process prints one
progress line. On a CPU, independent stages run side by side (``jobs`` processes with
``cores // jobs`` threads each), which uses two cores better than two threads inside the
tiny model's small operations. ``OUTPUT/demo_state.json`` records each finished stage
with the hash of its merged config: re-running the same command skips finished stages and
resumes an interrupted training from its last checkpoint; a stage whose config changed, or
whose input model was retrained, is run again from scratch. The demo holds the lock of
OUTPUT (utils/outdir.py) while it runs, so a second demo on the same folder is refused.
"""
import os
import time
from pathlib import Path

from apps.demo_stages import DEMO_PRESETS, DemoState, Runner, data_root_for, plan_stages
from apps.demo_summary import (collect, plot_roc_curves, plot_score_grid, plot_srd_example, print_table,
                               summary_markdown)
from training.run_identity import folder_contents
from utils.errors import ConfigError
from utils.io import atomic_write_json, atomic_write_text
from utils.outdir import claim_output


def detect_gpus(device: str) -> int:
    """GPUs the stages will use: 0 for ``cpu``; all visible CUDA GPUs for ``auto``/``cuda``."""
    if device == "cpu":
        return 0
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and count == 0:
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return count


def ensure_dataset(preset: str, data_root: Path, say) -> None:
    """Generate the preset's synthetic dataset into ``data_root`` unless it is already there
    (make_synthetic_dataset returns at once for the same preset, seed and generator version)."""
    from datasets.synthetic import make_synthetic_dataset

    data = DEMO_PRESETS[preset].data
    started = time.time()
    make_synthetic_dataset(data_root, preset=data, seed=0)
    say(f"dataset: {data_root} ({data} preset) ready in {time.time() - started:.1f} s")


def run_demo(preset="default", seeds=(0,), output="output/demo", device="auto", jobs=0, data_dir=None,
             plots=True, quiet=False) -> dict:
    """Run (or resume) the whole demo; returns the summary dict written to OUTPUT/summary.json."""
    if preset not in DEMO_PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r}; choose one of {sorted(DEMO_PRESETS)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("seeds: give at least one training seed")
    if int(jobs) < 0:  # a negative count never lets a stage start: the demo waited forever
        raise ConfigError(f"jobs must be >= 0 (0 = min(4, cores); CPU stages run side by side), got {jobs}")
    output = Path(output).resolve()
    kinds = folder_contents(output) if output.is_dir() else []
    if kinds:
        raise ConfigError(f"--output {output} holds a stage's {'/'.join(kinds)} run, whose plots/ the demo "
                          "would replace; choose another --output for the demo")
    notes = claim_output(output, "demo.py")  # created, locked, stale temporary files removed
    gpus = detect_gpus(device)
    cores = os.cpu_count() or 1
    if gpus > 0:
        jobs, threads, workers = 1, 0, 2
    else:
        jobs = jobs or max(1, min(4, cores))
        threads, workers = max(1, cores // jobs), 0
    runner = Runner(output, gpus, jobs, threads, cpu_only=device == "cpu", quiet=quiet)
    where = f"{gpus} CUDA GPU(s) through torchrun" if gpus else f"CPU, {jobs} stage(s) at a time x {threads} thread(s)"
    runner.say(f"preset {preset} ({DEMO_PRESETS[preset].description}); seeds {seeds}; {where}; output {output}")
    for note in notes:
        runner.say(note)
    data_root = data_root_for(preset, data_dir)
    ensure_dataset(preset, data_root, runner.say)
    stages = plan_stages(preset, seeds, output, data_root, workers)
    state = DemoState(output / "demo_state.json")
    timings = runner.run(stages, state)
    summary = collect(output, seeds, data_root)
    wall = time.time() - runner.started
    device_text = (f"{gpus} CUDA GPU(s)" if gpus else f"{cores}-core CPU")
    meta = {"preset": preset, "seeds": seeds, "device": device_text, "jobs": jobs, "threads": threads,
            "wall_s": wall, "data_root": str(data_root),
            "stage_seconds": {k: v.get("seconds") for k, v in state.stages.items()},
            "run_now": sorted(timings), "reused": sorted({s.key for s in stages} - set(timings))}
    summary["meta"] = meta
    if plots:
        folder = output / "plots"
        summary["plots"] = [str(p) for p in (
            plot_roc_curves(folder / "roc.png", output, seeds[0]),
            plot_score_grid(folder / "scores.png", output, seeds[0], data_root),
            plot_srd_example(folder / "srd_example.png", data_root))]
    atomic_write_json(output / "summary.json", summary)
    atomic_write_text(output / "summary.md", summary_markdown(summary, seeds, meta))
    print_table(summary, seeds)
    runner.say(f"wrote {output / 'summary.json'}, {output / 'summary.md'}"
               + (f" and {output / 'plots'}" if plots else "") + f"; total {wall:.0f} s")
    return summary
