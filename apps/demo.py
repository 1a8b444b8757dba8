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
whose input model was retrained, is run again from scratch.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import ConfigError, FrameShieldError
from utils.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "synthetic"


class DemoError(FrameShieldError):
    """A demo stage failed; the message names the stage and its log file."""


@dataclass(frozen=True)
class DemoPreset:
    """Dataset preset and per-stage ``--opts`` of one demo size (on top of configs/synthetic/demo_*.yaml)."""

    data: str
    description: str
    train_opts: tuple = ()
    adv_opts: tuple = ()
    attack_opts: tuple = ()


_CI_CLIPS = ("DATA.NUM_CLIPS", 4, "DATA.NUM_FRAMES", 2, "DATA.FRAME_INTERVAL", 2)
PRESETS = {
    "default": DemoPreset("default", "150 training / 60 test videos; the numbers in the README"),
    "fast": DemoPreset("small", "12 / 8 videos, short schedule: checks the pipeline in a minute or two",
                       train_opts=("TRAIN.EPOCHS", 4), adv_opts=("TRAIN.EPOCHS", 2)),
    "large": DemoPreset("large", "400 / 160 longer videos, same schedule",
                        train_opts=(), adv_opts=()),
    # the CI test's end-to-end run: a few videos, one epoch per stage, tiny clips
    "ci": DemoPreset("small", "CI smoke run: 12 / 8 videos, one epoch per stage, 4 clips x 2 frames",
                     train_opts=_CI_CLIPS + ("TRAIN.EPOCHS", 1, "TRAIN.WARMUP_EPOCHS", 0),
                     adv_opts=_CI_CLIPS + ("TRAIN.EPOCHS", 1, "ATTACK.STEPS", 1),
                     attack_opts=_CI_CLIPS + ("ATTACK.STEPS", 2)),
}

# model key -> (row title, what its adversarial training sets)
MODELS = {
    "baseline": ("PromptMIL (clean training)", None),
    "frameshield": ("FrameShield (pseudo labels + SRD)", ()),
    "pl_only": ("ablation: pseudo labels, no SRD", ("ADV_TRAIN.PSEUDO_ANOMALY", False)),
    "srd_only": ("ablation: SRD, video labels", ("ADV_TRAIN.PSEUDO_LABEL", False)),
}
METRICS = (("clean", "auc_all"), ("adversarial", "auc_all"), ("clean", "auc_ano"), ("adversarial", "auc_ano"))
METRIC_TITLES = ("clean AUC@all", "adv AUC@all", "clean AUC@ano", "adv AUC@ano")


@dataclass
class Stage:
    """One subprocess of the demo: an entry script run with a config into an output folder."""

    key: str             # "seed0/baseline"
    script: str          # main.py | main_advtrain.py | main_attack.py
    runner: str          # runners/<x>.sh used on GPUs
    config: Path
    output: Path
    opts: list
    pretrained: Path | None = None
    only_test: bool = False
    deps: list = field(default_factory=list)
    done_files: tuple = ("results.json",)

    def arguments(self, overwrite=False) -> list:
        """Entry-script arguments (also what the signature hashes, minus --overwrite)."""
        args = ["-cfg", str(self.config), "--output", str(self.output)]
        if self.pretrained is not None:
            args += ["--pretrained", str(self.pretrained)]
        if self.only_test:
            args.append("--only_test")
        if overwrite:
            args.append("--overwrite")
        return args + ["--opts", *[str(v) for v in self.opts]]

    def finished(self) -> bool:
        return all((self.output / name).is_file() for name in self.done_files)


# ----------------------------------------------------------------------------- plan
def default_output(preset: str) -> str:
    """Default output folder of a preset: one folder per preset, so that running another preset
    never replaces the stages (and the table) of the default one."""
    return "output/demo" if preset == "default" else f"output/demo_{preset}"


def data_root_for(preset: str, data_dir=None) -> Path:
    if data_dir:
        return Path(data_dir).resolve()
    name = "synthetic" if PRESETS[preset].data == "default" else f"synthetic_{PRESETS[preset].data}"
    return REPO / "data" / name


def plan_stages(preset: str, seeds, output: Path, data_root: Path, num_workers: int) -> list:
    """The stages of every seed in priority order (training first, then the attacks)."""
    spec = PRESETS[preset]
    data = ["DATA.ROOT", str(data_root), "DATA.TRAIN_FILE", str(data_root / "train.txt"),
            "DATA.VAL_FILE", str(data_root / "test.txt"), "DATA.NUM_WORKERS", num_workers]
    stages = []
    for seed in seeds:
        root = output / f"seed{seed}"
        common = data + ["SEED", seed]
        best = {m: root / m / "checkpoints" / "best.safetensors" for m in MODELS}
        labels_file = root / "pseudo_labels" / "pseudo_labels.json"
        stages.append(Stage(f"seed{seed}/baseline", "main.py", "runners/train.sh", CONFIGS / "demo_train.yaml",
                            root / "baseline", common + list(spec.train_opts)))
        stages.append(Stage(f"seed{seed}/pseudo_labels", "main_advtrain.py", "runners/genlabels.sh",
                            CONFIGS / "demo_advtrain.yaml", root / "pseudo_labels",
                            common + list(spec.adv_opts), pretrained=best["baseline"], only_test=True,
                            deps=[f"seed{seed}/baseline"], done_files=("results.json", "pseudo_labels.json")))
        for model, (_, switches) in MODELS.items():
            if switches is None:
                continue
            uses_labels = "ADV_TRAIN.PSEUDO_LABEL" not in switches
            opts = common + list(spec.adv_opts) + list(switches)
            deps = [f"seed{seed}/baseline"]
            if uses_labels:
                opts += ["ADV_TRAIN.PSEUDO_LABEL_FILE", str(labels_file)]
                deps.append(f"seed{seed}/pseudo_labels")
            stages.append(Stage(f"seed{seed}/{model}", "main_advtrain.py", "runners/advtrain.sh",
                                CONFIGS / "demo_advtrain.yaml", root / model, opts,
                                pretrained=best["baseline"], deps=deps))
        for model in MODELS:
            stages.append(Stage(f"seed{seed}/attack_{model}", "main_attack.py", "runners/attack.sh",
                                CONFIGS / "demo_attack.yaml", root / f"attack_{model}",
                                common + list(spec.attack_opts), pretrained=best[model],
                                deps=[f"seed{seed}/{model}"]))
    return stages


def stage_signature(stage: Stage) -> str:
    """Hash of the merged config the stage will run with (its computing keys) and its weights' path."""
    from utils.config import build_arg_parser, config_to_yaml, get_config
    from training.stage import RUN_MODE_KEYS, _flatten
    import yaml

    argv = [stage.script] + stage.arguments()
    args = build_arg_parser("demo").parse_args(argv[1:])
    flat = _flatten(yaml.safe_load(config_to_yaml(get_config(args))))
    kept = {k: v for k, v in sorted(flat.items()) if k not in RUN_MODE_KEYS}
    text = json.dumps({"script": stage.script, "only_test": stage.only_test, "config": kept}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- running
class DemoState:
    """``OUTPUT/demo_state.json``: finished stages with their signature and duration."""

    def __init__(self, path: Path):
        self.path = path
        self.stages = {}
        if path.is_file():
            try:
                self.stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {})
            except (json.JSONDecodeError, AttributeError):
                self.stages = {}

    def done(self, stage: Stage, signature: str) -> bool:
        record = self.stages.get(stage.key)
        return bool(record) and record.get("signature") == signature and stage.finished()

    def record(self, stage: Stage, signature: str, seconds: float) -> None:
        self.stages[stage.key] = {"signature": signature, "seconds": round(seconds, 1),
                                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(self.path, {"stages": self.stages})


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def last_progress(log: Path, width=70) -> str:
    """The latest progress-bar or log fragment of a stage's console log (for the status line)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in re.split(r"[\r\n]", _ANSI.sub("", tail)) if p.strip()]
    if not parts:
        return "starting"
    text = re.sub(r"\s+", " ", parts[-1])
    text = re.sub(r"^\[[^\]]*\]\([^)]*\): (INFO )?", "", text)  # logger prefix
    text = text.replace("█", "#")
    return text[:width]


class Runner:
    """Starts stage subprocesses (at most ``jobs`` at a time) and shows their progress."""

    def __init__(self, output: Path, gpus: int, jobs: int, threads: int, cpu_only: bool, quiet=False):
        self.output, self.gpus, self.jobs, self.threads = output, gpus, jobs, threads
        self.cpu_only, self.quiet = cpu_only, quiet
        self.logs = output / "logs"
        self.tty = sys.stdout.isatty()
        self.started = time.time()
        self._status_len = 0
        self._last_status = 0.0

    def say(self, text: str) -> None:
        self._clear_status()
        print(f"[demo {self.clock()}] {text}", flush=True)

    def clock(self) -> str:
        seconds = int(time.time() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def command(self, stage: Stage, overwrite: bool):
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.cpu_only:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.gpus > 0:
            env.update(CONFIG=str(stage.config), OUTPUT=str(stage.output),
                       PRETRAINED=str(stage.pretrained) if stage.pretrained else "",
                       PYTHON=sys.executable)
            args = stage.arguments(overwrite)
            # the runner adds -cfg/--output/--pretrained (and --only_test for genlabels) itself
            extra = args[args.index("--opts") - (1 if overwrite else 0):]
            return ["bash", str(REPO / stage.runner), str(self.gpus), *extra], env
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(self.threads)
        return [sys.executable, str(REPO / stage.script), *stage.arguments(overwrite)], env

    def run(self, stages, state: DemoState) -> dict:
        """Run every stage not already done; returns {stage key: seconds} of those run."""
        self.logs.mkdir(parents=True, exist_ok=True)
        by_key = {s.key: s for s in stages}
        signatures = {s.key: stage_signature(s) for s in stages}
        rerun = set()   # stages run in this call: their dependents must start fresh
        finished = set()
        for stage in stages:
            if state.done(stage, signatures[stage.key]) and not (set(stage.deps) & rerun):
                finished.add(stage.key)
                self.say(f"{stage.key}: done before, reused ({stage.output})")
            else:
                rerun.add(stage.key)
        pending = [s for s in stages if s.key not in finished]
        running, timings = {}, {}
        try:
            while pending or running:
                for stage in list(pending):
                    if len(running) >= self.jobs:
                        break
                    if all(d in finished for d in stage.deps):
                        pending.remove(stage)
                        running[stage.key] = self._start(stage, state, signatures[stage.key], rerun)
                for key, (proc, started, log, handle) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    handle.close()
                    del running[key]
                    seconds = time.time() - started
                    if code != 0:
                        raise DemoError(self._failure(by_key[key], code, log))
                    if not by_key[key].finished():
                        raise DemoError(f"{key} exited without writing {by_key[key].done_files} in "
                                        f"{by_key[key].output}; see {log}")
                    state.record(by_key[key], signatures[key], seconds)
                    finished.add(key)
                    timings[key] = seconds
                    self.say(f"{key}: finished in {seconds:.0f} s{headline(by_key[key])}")
                self._status(running)
                time.sleep(0.5)
        finally:
            for key, (proc, _, _, handle) in running.items():
                if proc.poll() is None:
                    proc.terminate()  # SIGTERM: training stages checkpoint and stop
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                handle.close()
            self._clear_status()
        return timings

    def _start(self, stage: Stage, state: DemoState, signature: str, rerun: set):
        record = state.stages.get(stage.key)
        # start over when another config ran in this folder or the input model was retrained;
        # otherwise an interrupted training resumes from its last checkpoint
        overwrite = (stage.output / "config.yaml").is_file() and (
            (record is not None and record.get("signature") != signature) or bool(set(stage.deps) & rerun)
            or (record is None and stage.finished()))
        cmd, env = self.command(stage, overwrite)
        log = self.logs / f"{stage.key.replace('/', '_')}.log"
        handle = open(log, "ab")
        handle.write(f"\n$ {' '.join(cmd)}\n".encode())
        handle.flush()
        self.say(f"{stage.key}: started{' (replacing an older run)' if overwrite else ''}; log {log}")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        return proc, time.time(), log, handle

    def _failure(self, stage: Stage, code: int, log: Path) -> str:
        tail = ""
        try:
            text = _ANSI.sub("", log.read_text(encoding="utf-8", errors="replace"))
            lines = [ln for ln in re.split(r"[\r\n]", text) if ln.strip() and "it/s" not in ln and "s/it" not in ln]
            tail = "\n    ".join(lines[-15:])
        except OSError:
            pass
        return (f"stage {stage.key} failed (exit code {code}); full log: {log}\n    {tail}\n"
                "fix the cause and run the same command again: finished stages are reused")

    def _status(self, running):
        if self.quiet or not running:
            return
        now = time.time()
        if now - self._last_status < (1.0 if self.tty else 30.0):
            return
        self._last_status = now
        width = 70 if len(running) == 1 else 52
        text = " | ".join(f"{key.replace('seed', 's')}: {last_progress(log, width)}"
                          for key, (_, _, log, _) in running.items())
        line = f"[demo {self.clock()}] {text}"
        if self.tty:
            columns = shutil.get_terminal_size((160, 20)).columns
            line = line[:columns - 1]
            sys.stdout.write("\r" + line.ljust(self._status_len))
            sys.stdout.flush()
            self._status_len = len(line)
        else:
            print(line, flush=True)

    def _clear_status(self):
        if self.tty and self._status_len:
            sys.stdout.write("\r" + " " * self._status_len + "\r")
            sys.stdout.flush()
            self._status_len = 0


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def headline(stage: Stage) -> str:
    """A short result of a finished stage for the console."""
    try:
        results = read_json(stage.output / "results.json")
    except (OSError, json.JSONDecodeError):
        return ""
    if "adversarial" in results:
        c, a = results["clean"], results["adversarial"]
        return f": AUC@all clean {fmt(c['auc_all'])} -> attacked {fmt(a['auc_all'])}"
    if results.get("best"):
        return f": best AUC@all {fmt(results['best'].get('auc_all'))} (epoch {results['best'].get('epoch')})"
    if "abnormal_fraction" in results:
        return f": {results.get('abnormal_segments')} of {results.get('segments')} segments labelled abnormal"
    return ""


def fmt(value, digits=3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- summary
def pseudo_label_agreement(labels_file: Path, data_root: Path) -> dict | None:
    """How often the pseudo labels of anomalous training videos equal the true clip labels.

    The truth (from the generator's meta.json, never read by training) of a segment is 1
    when any of its sampled frames lies in the anomaly interval.
    """
    meta_file = data_root / "meta.json"
    if not (labels_file.is_file() and meta_file.is_file()):
        return None
    videos = read_json(meta_file)["videos"]
    labels = read_json(labels_file)
    agree = total = tp = positives = predicted = 0
    for path, entry in labels.items():
        info = videos.get(path)
        if info is None or not info.get("label"):
            continue
        start, end = info["interval"]
        inds = np.asarray(entry["frame_inds"])
        truth = ((inds >= start) & (inds < end)).any(axis=1).astype(int)
        pred = (np.asarray(entry["labels"]) > 0).astype(int)
        agree += int((truth == pred).sum())
        total += len(truth)
        tp += int((truth & pred).sum())
        positives += int(truth.sum())
        predicted += int(pred.sum())
    if not total:
        return None
    return {"accuracy": agree / total, "recall": tp / positives if positives else None,
            "precision": tp / predicted if predicted else None, "segments": total}


def collect(output: Path, seeds, data_root: Path) -> dict:
    """Per-seed metrics of every model from the attack stages' results.json, mean and spread."""
    per_seed = {}
    for seed in seeds:
        root = output / f"seed{seed}"
        row = {}
        for model in MODELS:
            results = read_json(root / f"attack_{model}" / "results.json")
            row[model] = {f"{kind}_{metric}": results[kind][metric] for kind, metric in METRICS}
            row[model].update(clean_ap=results["clean"]["ap"], adv_ap=results["adversarial"]["ap"])
            attack = results["attack"]
        row["pseudo_labels"] = pseudo_label_agreement(root / "pseudo_labels" / "pseudo_labels.json", data_root)
        per_seed[str(seed)] = row
    summary = {"models": {}, "per_seed": per_seed, "attack": attack}
    for model, (title, _) in MODELS.items():
        stats = {}
        for name in per_seed[str(seeds[0])][model]:
            values = np.array([per_seed[str(s)][model][name] for s in seeds], dtype=float)
            stats[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                           "min": float(values.min()), "max": float(values.max())}
        summary["models"][model] = {"title": title, **stats}
    summary["claims"] = check_claims(summary["models"])
    return summary


def check_claims(models: dict) -> dict:
    """The demo's targets (issue: mean over seeds), each with the measured value."""
    base, shield = models["baseline"], models["frameshield"]
    drop = base["clean_auc_all"]["mean"] - base["adversarial_auc_all"]["mean"]
    gain = shield["adversarial_auc_all"]["mean"] - base["adversarial_auc_all"]["mean"]
    gap = abs(shield["clean_auc_all"]["mean"] - base["clean_auc_all"]["mean"])
    return {
        "baseline clean AUC@all >= 0.85": {"value": base["clean_auc_all"]["mean"],
                                           "holds": base["clean_auc_all"]["mean"] >= 0.85},
        "PGD drops baseline AUC@all by >= 0.30": {"value": drop, "holds": drop >= 0.30},
        "FrameShield adv AUC@all beats baseline's by >= 0.20": {"value": gain, "holds": gain >= 0.20},
        "FrameShield clean AUC@all within 0.05 of baseline": {"value": gap, "holds": gap <= 0.05},
    }


def summary_markdown(summary: dict, seeds, meta: dict) -> str:
    attack = summary["attack"]
    spread = "mean ± std over seeds " + ", ".join(str(s) for s in seeds) if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [f"# FrameShield demo ({meta['preset']} preset)", "",
             f"Frame-level AUROC on the synthetic test set ({spread}). Attack: L-inf PGD, "
             f"eps {attack['eps_255']:g}/255, {attack['steps']} steps of {attack['step_size_255']:.3g}/255, "
             "every test segment pushed away from its true label.", "",
             "| model | " + " | ".join(METRIC_TITLES) + " |", "|---|" + "---|" * len(METRICS)]
    for model, stats in summary["models"].items():
        cells = []
        for kind, metric in METRICS:
            s = stats[f"{kind}_{metric}"]
            cells.append(fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if len(seeds) > 1 else ""))
        lines.append(f"| {stats['title']} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines += ["", "Per seed, clean -> attacked AUC@all:", "",
                  "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for model, stats in summary["models"].items():
            rows = [summary["per_seed"][str(s)][model] for s in seeds]
            lines.append(f"| {stats['title']} | " + " | ".join(
                f"{fmt(r['clean_auc_all'])} -> {fmt(r['adversarial_auc_all'])}" for r in rows) + " |")
    lines += ["", "Targets (means):", ""]
    for claim, result in summary["claims"].items():
        lines.append(f"- {claim}: {fmt(result['value'])} ({'holds' if result['holds'] else 'NOT met'})")
    agreements = [r["pseudo_labels"] for r in summary["per_seed"].values() if r.get("pseudo_labels")]
    if agreements:
        acc = np.mean([a["accuracy"] for a in agreements])
        lines += ["", f"Pseudo labels of the anomalous training videos agree with the true clip labels "
                      f"on {100 * acc:.1f}% of segments (mean over seeds)."]
    wall = f"Wall time: {meta['wall_s']:.0f} s on {meta['device']} ({meta['jobs']} parallel stage(s))"
    reused = meta.get("reused", [])
    if reused:  # a resumed run: its wall time does not cover the stages finished before
        wall += (f"; {len(reused)} stage(s) were reused from an earlier run (their own run times "
                 f"are in demo_state.json)")
    lines += ["", wall + ".", ""]
    return "\n".join(lines)


def print_table(summary: dict, seeds) -> None:
    print()
    head = f"{'model':<36}" + "".join(f"{t:>17}" for t in METRIC_TITLES)
    print(head)
    print("-" * len(head))
    for stats in summary["models"].values():
        cells = []
        for kind, metric in METRICS:
            s = stats[f"{kind}_{metric}"]
            cells.append(fmt(s["mean"]) + (f" ± {fmt(s['std'], 2)}" if len(seeds) > 1 else ""))
        print(f"{stats['title']:<36}" + "".join(f"{c:>17}" for c in cells))
    print()
    for claim, result in summary["claims"].items():
        print(f"  {'ok ' if result['holds'] else 'NOT'} {claim}: {fmt(result['value'])}")
    print(flush=True)


# ----------------------------------------------------------------------------- plots
def _attack_scores(folder: Path) -> dict:
    from training.stage import read_scores

    return read_scores(folder / "scores.npz")


def plot_roc_curves(path: Path, output: Path, seed) -> Path:
    """ROC of the baseline and FrameShield, clean and attacked (one seed)."""
    from sklearn.metrics import roc_curve

    from utils import plots

    curves = {}
    for model, name in (("baseline", "PromptMIL"), ("frameshield", "FrameShield")):
        data = _attack_scores(output / f"seed{seed}" / f"attack_{model}")
        labels = data["frame_labels"]
        for kind in ("clean", "adversarial"):
            scores = data[f"{kind}_frame_scores"]
            fpr, tpr, _ = roc_curve(labels, scores)
            from sklearn.metrics import roc_auc_score

            curves[f"{name}, {kind}"] = (fpr, tpr, roc_auc_score(labels, scores))
    return plots.plot_roc(path, curves, title=f"frame-level ROC under PGD (seed {seed})")


def pick_videos(data_root: Path, count=4) -> list:
    """Test videos to draw: the first anomalous one of each anomaly type (list order), then normal."""
    meta = read_json(data_root / "meta.json")["videos"]
    chosen, types = [], set()
    for path, info in meta.items():
        if info["split"] == "test" and info.get("label") and info.get("anomaly") not in types:
            chosen.append(path)
            types.add(info.get("anomaly"))
    chosen = chosen[:count - 1]
    chosen += [p for p, i in meta.items() if i["split"] == "test" and not i.get("label")][:1]
    return chosen


def plot_score_grid(path: Path, output: Path, seed, data_root: Path) -> Path:
    """Per-frame P(abnormal), clean vs attacked, of a few test videos: baseline | FrameShield."""
    from matplotlib.figure import Figure

    from utils.plots import anomaly_intervals, save_figure

    videos = pick_videos(data_root)
    meta = read_json(data_root / "meta.json")["videos"]
    models = (("baseline", "PromptMIL"), ("frameshield", "FrameShield"))
    data = {m: _attack_scores(output / f"seed{seed}" / f"attack_{m}") for m, _ in models}
    figure = Figure(figsize=(11, 1.9 * len(videos) + 0.6))
    axes = figure.subplots(len(videos), len(models), squeeze=False, sharey=True)
    for row, video in enumerate(videos):
        for col, (model, title) in enumerate(models):
            d = data[model]
            names = [str(v) for v in d["videos"]]
            i = names.index(video)
            lo, hi = d["frame_offsets"][i], d["frame_offsets"][i + 1]
            ax = axes[row, col]
            for start, end in anomaly_intervals(d["frame_labels"][lo:hi]):
                ax.axvspan(start, end, color="red", alpha=0.15, linewidth=0)
            frames = np.arange(hi - lo)
            ax.plot(frames, d["clean_frame_scores"][lo:hi], color="tab:blue", label="clean")
            ax.plot(frames, d["adversarial_frame_scores"][lo:hi], color="tab:orange", label="PGD-attacked")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlim(0, max(hi - lo - 1, 1))
            kind = meta.get(video, {}).get("anomaly") or "normal"
            ax.set_title(f"{title}: {video.split('/')[-1]} ({kind})", fontsize=9)
            if col == 0:
                ax.set_ylabel("P(abnormal)")
            if row == len(videos) - 1:
                ax.set_xlabel("frame")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    figure.suptitle("red: ground-truth anomaly", fontsize=9, y=0.995)
    figure.tight_layout()
    save_figure(figure, path, dpi=80, tight=False)
    return path


def plot_srd_example(path: Path, data_root: Path, clips=4, frames=2) -> Path:
    """One normal training video before (top) and after (bottom) SRD, as in training."""
    import torch
    from matplotlib.figure import Figure

    from datasets import srd
    from datasets.frames import open_video
    from datasets.lists import parse_list_file
    from utils.plots import save_figure

    record = next(r for r in parse_list_file(data_root / "train.txt") if not r.is_anomalous)
    reader = open_video(data_root / record.path, record.num_frames, list_start=record.start_frame)
    inds = np.linspace(0, record.num_frames - 1, clips * frames).round().astype(int)
    video = reader.read(inds).view(clips, frames, 3, *reader.read([0]).shape[-2:])
    for seed in range(200):  # the first SRD draw that leaves clip 0 untouched, for contrast
        out, pa_labels, boxes = srd.apply_srd(video, torch.Generator().manual_seed(seed), force=True)
        if pa_labels[0] == 0 and pa_labels.sum() >= 1:
            break
    figure = Figure(figsize=(1.3 * clips * frames, 3.0))
    axes = figure.subplots(2, clips * frames)
    for k in range(clips):
        for t in range(frames):
            col = k * frames + t
            for row, source in enumerate((video, out)):
                ax = axes[row, col]
                ax.imshow(source[k, t].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 1 and pa_labels[k]:
                    x0, y0, x1, y1 = boxes[k, t].tolist()
                    ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                        (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", linewidth=1))
            if t == 0:
                axes[1, col].set_xlabel(f"clip {k}: label {int(pa_labels[k])}", fontsize=8, loc="left")
    axes[0, 0].set_ylabel("normal", fontsize=9)
    axes[1, 0].set_ylabel("after SRD", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=80, tight=False)
    return path


# ----------------------------------------------------------------------------- entry
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

    data = PRESETS[preset].data
    started = time.time()
    make_synthetic_dataset(data_root, preset=data, seed=0)
    say(f"dataset: {data_root} ({data} preset) ready in {time.time() - started:.1f} s")


def run_demo(preset="default", seeds=(0,), output="output/demo", device="auto", jobs=0, data_dir=None,
             plots=True, quiet=False) -> dict:
    """Run (or resume) the whole demo; returns the summary dict written to OUTPUT/summary.json."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)}")
    seeds = [int(s) for s in seeds]
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    gpus = detect_gpus(device)
    cores = os.cpu_count() or 1
    if gpus > 0:
        jobs, threads, workers = 1, 0, 2
    else:
        jobs = jobs or max(1, min(4, cores))
        threads, workers = max(1, cores // jobs), 0
    runner = Runner(output, gpus, jobs, threads, cpu_only=device == "cpu", quiet=quiet)
    where = f"{gpus} CUDA GPU(s) through torchrun" if gpus else f"CPU, {jobs} stage(s) at a time x {threads} thread(s)"
    runner.say(f"preset {preset} ({PRESETS[preset].description}); seeds {seeds}; {where}; output {output}")
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
