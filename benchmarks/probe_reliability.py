"""Before/after probe of issue 15: a hostile or careless user through the real entry points.

Every case builds a tiny sandbox (a temp folder holding a copy of a small synthetic dataset,
of a trained tiny run, a ``victim.txt`` and whatever bad input the case is about), runs the
entry scripts of the repository given by ``--repo`` as subprocesses (cwd = the sandbox, so
relative paths never reach the repository) and classifies the outcome automatically:

* ``clear``: exit 2, no traceback, and the last output line is an error naming the thing at fault;
* ``traceback``: a Python traceback in the output;
* ``hang`` / ``hang/oom``: ran past the case's timeout / hit the memory cap (RLIMIT_AS);
* ``handled``: exit 0 and the case's own check of the correct behaviour passes;
* ``silent``: exit 0 but the check finds a wrong result (NaN scores, frames skipped, ...);
* ``lost``: a file that existed before the run was changed or deleted when it should not have
  been, or a file outside the folders the run may write was touched (snapshots before/after);
* ``unclear``: any other failure (exit 1, a signal, or exit 2 whose last line names nothing);
* ``skipped``: the case cannot be probed on this machine (e.g. read-only folders as root).

Run: ``python benchmarks/probe_reliability.py --repo /path/to/checkout --json out.json
--markdown out.md [--only SUBSTR] [--jobs 2]``. The cases live in benchmarks/probe_cases*.py;
the same script measures the old code and the new one, so the verdict table is comparable.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MEMORY_CAP = 6 << 30
STALL = 20.0  # seconds without output before a timeout that make it a hang
TRACEBACK = "Traceback (most recent call last)"
OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "can't allocate memory", "std::bad_alloc")
ERROR_LINE = re.compile(r"(ConfigError|ListFileError|DataError|CheckpointError|TrainingError|FrameShieldError)"
                        r":|\berror:|\bERROR\b")


@dataclass
class Box:
    """One case's sandbox: ``root`` (the temp folder, cwd of the commands), the repository
    under probe and the shared fixture (dataset, trained runs) built once per probe run."""

    root: Path
    repo: Path
    fix: Path

    def __truediv__(self, part: str) -> Path:
        return self.root / part


Check = Callable[[Box, str], "str | None"]


@dataclass
class Plan:
    """What a case's setup returns. ``commands`` run side by side. ``check`` judges an exit 0:
    None = correct behaviour (handled), a string = what is wrong (silent); without a check, an
    exit 0 means the bad input was accepted (silent). ``writable``: sandbox folders the run
    may write; everything else in the sandbox must stay as it was, and so must ``protect``
    (globs inside writable folders). ``names``: words of which a clear error names one.
    ``strict_last``: the error must be the last line (torchrun cases). ``stagger``: seconds
    between the starts of the commands. ``after``: run whatever the exit code, a string = data
    lost (e.g. no valid checkpoint left). ``cleanup``: called at the end (unmount)."""

    commands: list[list[str]]
    check: Check | None = None
    writable: tuple[str, ...] = ("out",)
    protect: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    timeout: float = 60.0
    skip: str = ""
    stagger: float = 0.0
    strict_last: bool = False
    after: Check | None = None
    cleanup: Callable[[], None] | None = None


@dataclass
class Case:
    name: str
    cls: int
    setup: Callable[[Box], Plan]


@dataclass
class Outcome:
    name: str
    cls: int
    verdict: str
    exit_code: int | None
    seconds: float
    last_line: str
    detail: str = ""
    output_tail: str = field(default="", repr=False)


def env_for(repo: Path) -> dict:
    """A quiet CPU-only environment; ``python`` and $PYTHON are this interpreter (runners)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(repo), PYTHON=sys.executable, MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def _limit_memory() -> None:
    """preexec_fn: cap the address space, so a run that would eat the machine fails instead."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def start(command: list[str], box: Box) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=box.root, env=env_for(box.repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=_limit_memory,
                            start_new_session=True)


class Reader:
    """Collects a command's output in a thread, with the time of its last line (a run that
    still prints at its timeout is slow, not hung)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)
            self.last = time.monotonic()

    def text(self) -> str:
        self.thread.join(timeout=10)
        return "".join(self.lines)


def stop(proc: subprocess.Popen) -> None:
    """Kill a command and every process it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def snapshot(box: Box, plan: Plan) -> dict[str, str]:
    """Hash of every file (or link target) of the sandbox outside the writable folders, plus the
    ``protect`` globs; symbolic links are recorded, never followed."""
    state = {}
    writable = [box.root / w for w in plan.writable]
    for dirpath, dirnames, filenames in os.walk(box.root):
        here = Path(dirpath)
        if any(here == w or w in here.parents for w in writable):
            dirnames[:] = []
            continue
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            state[str((here / name).relative_to(box.root))] = _digest(here / name)
    for pattern in plan.protect:
        for path in box.root.glob(pattern):
            state[str(path.relative_to(box.root))] = _digest(path)
    return state


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(before: dict[str, str], after: dict[str, str], plan: Plan) -> str:
    """What was lost or touched: changed, deleted, or new files outside the writable folders."""
    changed = [k for k in before if k in after and after[k] != before[k]]
    deleted = [k for k in before if k not in after]
    created = [k for k in after if k not in before
               and not any(k == w or k.startswith(w.rstrip("/") + "/") for w in plan.writable)]
    parts = [f"{what}: {', '.join(sorted(names)[:4])}" for what, names in
             (("changed", changed), ("deleted", deleted), ("created outside", created)) if names]
    return "; ".join(parts)


def last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def classify(plan: Plan, codes: list[int | None], outputs: list[str], lost: str, box: Box) -> tuple[str, str]:
    """(verdict, detail) of one case (``outputs``: one per command); the worst outcome wins."""
    output = "\n".join(outputs)
    if any(code is None for code in codes):
        return "hang", f"ran past {plan.timeout:.0f} s"
    if any(marker in output for marker in OOM_MARKERS):
        return "hang/oom", f"hit the {MEMORY_CAP >> 30} GiB memory cap"
    lost = lost or (plan.after(box, output) if plan.after else "") or ""
    if lost:
        return "lost", lost
    if TRACEBACK in output:
        return "traceback", _exception_line(output)
    if all(code == 0 for code in codes):
        try:
            problem = plan.check(box, output) if plan.check else "exit 0: the bad input was accepted without an error"
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:  # the check's reading of outputs
            return "probe-error", f"the case's check failed: {err!r}"
        return ("handled", "") if problem is None else ("silent", problem)
    blocks = [error_block(out, 1 if plan.strict_last else 12) for code, out in zip(codes, outputs) if code != 0]
    if all(code in (0, 2) for code in codes) and all(blocks):
        if not plan.names or all(any(n.lower() in b.lower() for n in plan.names) for b in blocks):
            return "clear", ""
        return "unclear", f"exit 2, but the error names none of {list(plan.names)}"
    return "unclear", f"exit codes {codes}; the output does not end with the project's error"


def error_block(output: str, tail: int = 12) -> str:
    """The error the output ends with: from its first error line among the last ``tail``
    non-empty lines (a message may list details below its first line, or a summary error
    follow the one that names the cause) to the end; "" when the last line is no error's."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    window = lines[-tail:]
    if tail == 1 and not (window and ERROR_LINE.search(window[0])):
        return ""
    first = next((i for i, line in enumerate(window) if ERROR_LINE.search(line)), None)
    return "" if first is None else "\n".join(window[first:])


def _exception_line(output: str) -> str:
    tail = output[output.rfind(TRACEBACK):].splitlines()
    errors = [line for line in tail if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return (errors[-1] if errors else tail[-1] if tail else "")[:300]


def run_case(case: Case, repo: Path, fix: Path, tmp_root: Path) -> Outcome:
    box = Box(Path(tempfile.mkdtemp(prefix=f"{case.name[:40]}.", dir=tmp_root)), repo, fix)
    (box / "victim.txt").write_text("a file beside the run that no run may touch\n")
    began = time.monotonic()
    try:
        plan = case.setup(box)
    except Exception as err:  # a setup that cannot build its input is a probe bug: report, keep going
        return Outcome(case.name, case.cls, "probe-error", None, 0.0, "", f"setup failed: {err!r}")
    if plan.skip:
        return Outcome(case.name, case.cls, "skipped", None, 0.0, "", plan.skip)
    before = snapshot(box, plan)
    began = time.monotonic()
    procs = []
    for i, command in enumerate(plan.commands):
        if i and plan.stagger:
            time.sleep(plan.stagger)
        procs.append(start(command, box))
    readers = [Reader(proc) for proc in procs]
    codes: list[int | None] = []
    stalled = True
    for proc, reader in zip(procs, readers):
        left = max(1.0, plan.timeout - (time.monotonic() - began))
        try:
            codes.append(proc.wait(timeout=left))
        except subprocess.TimeoutExpired:
            stalled = stalled and time.monotonic() - reader.last > STALL
            stop(proc)
            proc.wait()
            codes.append(None)
    outputs = [reader.text() for reader in readers]
    seconds = time.monotonic() - began
    output = "\n".join(outputs)
    lost = compare(before, snapshot(box, plan), plan)
    (box / "probe_output.txt").write_text(f"{plan.commands}\nexit codes {codes}\n{output}")
    verdict, detail = classify(plan, codes, outputs, lost, box)
    if verdict == "hang" and not stalled:
        verdict, detail = "unclear", f"still printing progress at the {plan.timeout:.0f} s timeout: slow, not stuck"
    if plan.cleanup:
        plan.cleanup()
    code = next((c for c in codes if c not in (0, None)), codes[0]) if codes else None
    failed = next((out for c, out in zip(codes, outputs) if c not in (0, None)), output)
    shown = error_block(failed).splitlines()[0] if error_block(failed) else last_line(failed)
    return Outcome(case.name, case.cls, verdict, code, round(seconds, 1), shown[:300], detail,
                   output[-3000:])


def build_fixture(repo: Path, fix: Path) -> None:
    """The shared inputs: the small synthetic dataset, a finished 1-epoch run (``run``) and a run
    stopped by SIGTERM inside its 2nd epoch (``mid``, for resume cases), and stage 2a's pseudo
    labels; all with relative data paths so that a copy in a sandbox is "the same run"."""
    from benchmarks import probe_common as common

    box = Box(fix, repo, fix)
    steps = [[sys.executable, "-m", "datasets.synthetic", "--out", str(fix / "data"), "--preset", "small"]]
    for command in steps:
        _must(subprocess.run(command, cwd=repo, env=env_for(repo), capture_output=True, text=True), command)
    run = start(common.train(box, "run"), box)
    mid = start(common.train(box, "mid", "TRAIN.EPOCHS", "2"), box)
    while mid.poll() is None and not (fix / "mid" / "checkpoints" / "last.manifest.json").exists():
        time.sleep(0.2)
    if mid.poll() is None:
        os.killpg(mid.pid, signal.SIGTERM)
    mid.communicate(timeout=300)
    out, _ = run.communicate(timeout=300)
    if run.returncode != 0:
        raise SystemExit(f"fixture: the tiny training run failed:\n{out[-3000:]}")
    _must(subprocess.run(common.genlabels(box, "pl", fix / "run"), cwd=fix, env=env_for(repo),
                         capture_output=True, text=True), "stage 2a")
    shutil.rmtree(fix / "run" / "tb", ignore_errors=True)
    shutil.rmtree(fix / "mid" / "tb", ignore_errors=True)


def _must(result: subprocess.CompletedProcess, what) -> None:
    if result.returncode != 0:
        raise SystemExit(f"fixture step {what} failed:\n{(result.stdout or '')[-2000:]}{(result.stderr or '')[-2000:]}")


def markdown(outcomes: list[Outcome], repo: Path) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    lines = [f"# Reliability probe of {repo}", "", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
             "", "| class | cases | " + " | ".join(sorted(counts)) + " |", "|---|---|" + "---|" * len(counts)]
    for cls in sorted({o.cls for o in outcomes}):
        row = [sum(1 for o in outcomes if o.cls == cls and o.verdict == v) for v in sorted(counts)]
        lines.append(f"| {cls} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    lines += ["", "| case | class | verdict | exit | s | last line / detail |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        text = (o.detail + " / " if o.detail else "") + o.last_line
        text = text.replace("|", "\\|").replace("\n", " ")[:220]
        lines.append(f"| {o.name} | {o.cls} | {o.verdict} | {o.exit_code} | {o.seconds} | {text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="checkout whose entry scripts are probed")
    parser.add_argument("--json", type=Path, help="write the outcomes as a JSON list")
    parser.add_argument("--markdown", type=Path, help="write the outcomes as a markdown table")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this (several: comma-separated)")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="cases run side by side")
    parser.add_argument("--update", action="store_true",
                        help="replace only the rerun cases' rows in an existing --json (and rewrite --markdown)")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes (and probe_output.txt) for reading")
    parser.add_argument("--extended", action="store_true", help="also the extra members of each class (~60 more cases)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.probe_cases import all_cases

    repo = args.repo.resolve()
    wanted = args.only.split(",")
    cases = [c for c in all_cases(args.extended) if any(w in c.name for w in wanted)]
    tmp_root = Path(tempfile.mkdtemp(prefix="frameshield_probe."))
    print(f"probing {repo}: {len(cases)} case(s), sandboxes under {tmp_root}", flush=True)
    build_fixture(repo, tmp_root / "fixture")
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_case, case, repo, tmp_root / "fixture", tmp_root) for case in cases]
        for future in futures:
            o = future.result()
            outcomes.append(o)
            print(f"{o.verdict:10} {o.cls} {o.name:45} exit={o.exit_code} {o.seconds:5.1f}s {o.detail[:80]}", flush=True)
    if args.update and args.json and args.json.is_file():
        fresh = {o.name: o for o in outcomes}
        old = [Outcome(**row) for row in json.loads(args.json.read_text())]
        outcomes = [fresh.pop(o.name, o) for o in old] + list(fresh.values())
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in vars(o).items()} for o in outcomes], indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(outcomes, repo))
    if not args.keep:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
