"""The demo's stages: presets, the plan per seed, the stage processes and the resume state.

Every stage is a subprocess of an entry script (main.py, main_advtrain.py, main_attack.py,
through runners/*.sh); ``demo_state.json`` records each finished stage with the hash of
its merged config, so the same command skips finished stages and resumes the rest.
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

from utils.errors import FrameShieldError
from utils.io import atomic_write_json

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
DEMO_PRESETS = {
    "default": DemoPreset("default", "150 training / 60 test videos; the numbers in the README"),
    "fast": DemoPreset("small", "12 / 8 videos, short schedule: checks the pipeline in a minute or two",
                       train_opts=("TRAIN.EPOCHS", 4), adv_opts=("TRAIN.EPOCHS", 2)),
    "large": DemoPreset("large", "400 / 160 longer videos, same schedule",
                        train_opts=(), adv_opts=()),
    # the second synthetic family (datasets.synthetic_variant), same configs: the recipe was not tuned on it
    "variant": DemoPreset("variant", "150 / 60 videos of the variant family (other scenes, 48 px, other events)"),
    "variant_fast": DemoPreset("variant_small", "12 / 8 variant videos, short schedule",
                               train_opts=("TRAIN.EPOCHS", 4), adv_opts=("TRAIN.EPOCHS", 2)),
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
class DemoStage:
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
    name = "synthetic" if DEMO_PRESETS[preset].data == "default" else f"synthetic_{DEMO_PRESETS[preset].data}"
    return REPO / "data" / name


def plan_stages(preset: str, seeds, output: Path, data_root: Path, num_workers: int) -> list:
    """The stages of every seed in priority order (training first, then the attacks)."""
    spec = DEMO_PRESETS[preset]
    # models are chosen on the validation split of the training videos (val.txt), trained on the rest
    data = ["DATA.ROOT", str(data_root), "DATA.TRAIN_FILE", str(data_root / "train_fit.txt"),
            "DATA.VAL_FILE", str(data_root / "test.txt"), "DATA.VAL_SPLIT_FILE", str(data_root / "val.txt"),
            "DATA.NUM_WORKERS", num_workers]
    stages = []
    for seed in seeds:
        root = output / f"seed{seed}"
        common = data + ["SEED", seed]
        best = {m: root / m / "checkpoints" / "best.safetensors" for m in MODELS}
        labels_file = root / "pseudo_labels" / "pseudo_labels.json"
        stages.append(DemoStage(f"seed{seed}/baseline", "main.py", "runners/train.sh", CONFIGS / "demo_train.yaml",
                            root / "baseline", common + list(spec.train_opts)))
        stages.append(DemoStage(f"seed{seed}/pseudo_labels", "main_advtrain.py", "runners/genlabels.sh",
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
            stages.append(DemoStage(f"seed{seed}/{model}", "main_advtrain.py", "runners/advtrain.sh",
                                CONFIGS / "demo_advtrain.yaml", root / model, opts,
                                pretrained=best["baseline"], deps=deps))
        for model in MODELS:
            stages.append(DemoStage(f"seed{seed}/attack_{model}", "main_attack.py", "runners/attack.sh",
                                CONFIGS / "demo_attack.yaml", root / f"attack_{model}",
                                common + list(spec.attack_opts), pretrained=best[model],
                                deps=[f"seed{seed}/{model}"]))
    return stages


def stage_signature(stage: DemoStage) -> str:
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

    def done(self, stage: DemoStage, signature: str) -> bool:
        record = self.stages.get(stage.key)
        return bool(record) and record.get("signature") == signature and stage.finished()

    def record(self, stage: DemoStage, signature: str, seconds: float) -> None:
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

    def command(self, stage: DemoStage, overwrite: bool):
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

    def _start(self, stage: DemoStage, state: DemoState, signature: str, rerun: set):
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

    def _failure(self, stage: DemoStage, code: int, log: Path) -> str:
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


def headline(stage: DemoStage) -> str:
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
        of = results.get("anomalous_video_segments", results.get("segments"))
        return f": {results.get('abnormal_segments')} of the anomalous videos' {of} segments labelled abnormal"
    return ""


def fmt(value, digits=3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- summary
