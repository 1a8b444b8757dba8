"""Issue 7, points 3 and 5, checked on the source code itself (AST, not regular expressions,
so comments and docstrings do not count and formatting cannot hide a call):

- every ``torch.load`` is ``weights_only=True``, except exactly one that passes the
  project's restricted unpickler (``pickle_module=safe_pickle``);
- nothing unpickles without restriction: no ``pickle.load``/``loads``/``Unpickler(...)``
  calls, ``np.load`` only with ``allow_pickle=False``, no ``torch.jit.load``, no
  ``yaml.load``/``unsafe_load``, no ``eval``/``exec``, no pickle-based libraries;
  an ``Unpickler`` subclass must restrict ``find_class``;
- no bare ``except:``;
- every file the project writes goes through utils/io.py (a ``with atomic_path(...)``
  block or ``atomic_write_*``); writes into in-memory buffers and appends (logs) aside,
  the exceptions are listed with their reason;
- stage outputs (scores, pseudo labels, results) are JSON/npz/safetensors, readable
  without pickle; a crafted checkpoint that would run a command is refused and the
  command does not run, through the stage entry point as well.
"""
import ast
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", "data", "output", "outputs", ".venv",
             "work_dirs"}


def project_files():
    """Every .py file of the project (sources, entry scripts, benchmarks, tests)."""
    files = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    assert len(files) > 30, "the scan found too few files to be the project"
    return sorted(files)


def dotted(node):
    """'torch.load' for the call target ``torch.load`` (None for computed targets)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else f"?.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func)
    return None


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def is_false(node):
    return isinstance(node, ast.Constant) and node.value is False


class Scan(ast.NodeVisitor):
    """Calls of one file with their context: enclosing function and atomic_path blocks."""

    def __init__(self, path):
        self.path = path.relative_to(REPO).as_posix() if isinstance(path, Path) else path
        self.calls = []  # (rel path, line, function, target, call node, inside atomic_path)
        self.bare_excepts = []
        self.classes = []
        self._function = ["<module>"]
        self._buffers = [set()]  # names bound to in-memory buffers, per function
        self._atomic = 0

    def visit_FunctionDef(self, node):
        self._function.append(node.name)
        self._buffers.append(set())
        self.generic_visit(node)
        self._buffers.pop()
        self._function.pop()

    def visit_Assign(self, node):
        if dotted(node.value) in ("io.BytesIO", "BytesIO", "io.StringIO", "StringIO"):
            self._buffers[-1].update(t.id for t in node.targets if isinstance(t, ast.Name))
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_With(self, node):
        atomic = any(dotted(item.context_expr) in ("atomic_path", "io.atomic_path", "utils.io.atomic_path")
                     for item in node.items)
        for item in node.items:
            self.visit(item)
        self._atomic += atomic
        for statement in node.body:
            self.visit(statement)
        self._atomic -= atomic

    def visit_ExceptHandler(self, node):
        if node.type is None:
            self.bare_excepts.append(f"{self.path}:{node.lineno}")
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        self.classes.append(node)
        self.generic_visit(node)

    def visit_Call(self, node):
        in_memory = any(isinstance(a, ast.Name) and a.id in self._buffers[-1] for a in node.args[:2])
        self.calls.append((self.path, node.lineno, self._function[-1], dotted(node.func), node,
                           self._atomic > 0 or in_memory))
        self.generic_visit(node)


@pytest.fixture(scope="module")
def scans():
    out = []
    for path in project_files():
        scan = Scan(path)
        scan.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out.append(scan)
    return out


def all_calls(scans):
    return [c for s in scans for c in s.calls]


def test_every_torch_load_is_weights_only_but_the_restricted_one(scans):
    loads = [c for c in all_calls(scans) if c[3] is not None and c[3].endswith("torch.load")]
    assert loads, "no torch.load found: the scan is broken"
    restricted, bad = [], []
    for path, line, function, _, call, _ in loads:
        where = f"{path}:{line} ({function})"
        if is_true(keyword(call, "weights_only")):
            continue
        module = keyword(call, "pickle_module")
        if is_false(keyword(call, "weights_only")) and dotted(module) == "safe_pickle":
            restricted.append(where)
        else:
            bad.append(where)
    assert not bad, f"torch.load without weights_only=True: {bad}"
    assert len(restricted) == 1 and restricted[0].startswith("models/checkpoint_io.py"), restricted


FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load",
    "torch.jit.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "marshal.load", "marshal.loads",
    "eval", "exec", "pandas.read_pickle", "pd.read_pickle", "joblib.load", "dill.load", "dill.loads",
    "shelve.open", "torch.serialization.load", "torch.package.PackageImporter",
}


def test_no_unrestricted_unpickling_or_code_evaluation(scans):
    found = [f"{p}:{n} {t}()" for p, n, _, t, _, _ in all_calls(scans) if t in FORBIDDEN_CALLS]
    assert not found, f"calls that can run code from a file or string: {found}"
    imports = []
    for scan in scans:
        tree = ast.parse((REPO / scan.path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "yaml", "marshal", "dill"):
                names = {a.name for a in node.names}
                if names & {"load", "loads", "Unpickler", "unsafe_load", "full_load"}:
                    imports.append(f"{scan.path}:{node.lineno} from {node.module} import {sorted(names)}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                if any(m in ("dill", "cloudpickle", "joblib", "shelve") for m in modules):
                    imports.append(f"{scan.path}:{node.lineno} imports {modules}")
    assert not imports, f"imports that bypass the call check: {imports}"


def test_np_load_never_allows_pickle(scans):
    loads = [c for c in all_calls(scans) if c[3] in ("np.load", "numpy.load")]
    bad = [f"{p}:{n}" for p, n, _, _, call, _ in loads if not is_false(keyword(call, "allow_pickle"))]
    assert not bad, f"np.load without allow_pickle=False: {bad}"


def test_unpickler_subclasses_restrict_find_class(scans):
    subclasses = []
    for scan in scans:
        for cls in scan.classes:
            if any(dotted(base) in ("pickle.Unpickler", "Unpickler", "_pickle.Unpickler") for base in cls.bases):
                methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
                subclasses.append((f"{scan.path}:{cls.lineno} {cls.name}", "find_class" in methods))
    assert subclasses, "the restricted unpickler was not found"
    assert all(ok for _, ok in subclasses), f"Unpickler subclasses without find_class: {subclasses}"


def test_no_bare_except(scans):
    bare = [b for s in scans for b in s.bare_excepts]
    assert not bare, f"bare `except:` (catches KeyboardInterrupt/SystemExit, hides errors): {bare}"


# ---- atomic writes -------------------------------------------------------------------------------
WRITE_METHODS = {"write_text", "write_bytes", "savefig", "save", "savez", "savez_compressed", "save_file",
                 "imwrite", "write_jpeg", "write_png", "write_file", "to_csv", "dump"}
# (file, function) -> why a write there need not be atomic
NOT_ATOMIC_ON_PURPOSE = {
    ("utils/io.py", "atomic_path"): "reopens its own temporary file to fsync it",
    ("datasets/synthetic.py", "_write_dataset"): "written into a staging folder that is renamed into place "
                                                 "as a whole (make_synthetic_dataset)",
}


def write_calls(scans):
    """Write sites that are neither inside ``with atomic_path(...)`` nor into an in-memory
    buffer, nor appends (logs). Tests and benchmarks (throw-away inputs) are not checked."""
    sites = []
    for path, line, function, target, call, atomic in all_calls(scans):
        if path.startswith(("tests/", "benchmarks/")) or target is None or atomic:
            continue
        method = target.rsplit(".", 1)[-1]
        is_write = method in WRITE_METHODS and target not in ("json.dump", "yaml.dump", "yaml.safe_dump") \
            or target in ("torch.save", "np.save")
        if target in ("open", "?.open", "av.open") or method == "open":
            mode = keyword(call, "mode") or (call.args[1] if len(call.args) > 1 else None)
            is_write = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(
                ch in mode.value for ch in "wx+")
        if is_write:
            sites.append((path, function, f"{path}:{line} {target}()"))
    return sites


def test_every_written_file_goes_through_atomic_writes(scans):
    sites = write_calls(scans)
    unexpected = [where for path, function, where in sites if (path, function) not in NOT_ATOMIC_ON_PURPOSE]
    assert not unexpected, (f"files written without utils.io.atomic_path / atomic_write_*: {unexpected}; "
                            "a kill during the write would leave a half-written file")
    stale = set(NOT_ATOMIC_ON_PURPOSE) - {(p, f) for p, f, _ in sites}
    assert not stale, f"NOT_ATOMIC_ON_PURPOSE lists places that no longer write: {stale}"


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    from utils.io import atomic_path, atomic_write_text

    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# ---- outputs and checkpoints -----------------------------------------------------------------------

def test_score_and_label_outputs_load_without_pickle(tmp_path):
    from types import SimpleNamespace

    from datasets.lists import VideoRecord
    from training.pseudo_labels import VideoPseudoLabels, read_pseudo_labels, write_pseudo_labels
    from training.stage import read_scores, write_results, write_scores

    stage = SimpleNamespace(is_main=True, output=tmp_path, name="t", started=0.0,
                            args=SimpleNamespace(config="c.yaml"), logger=SimpleNamespace(info=lambda *a: None))
    videos = {"a": {"starts": np.array([0, 4]), "lengths": np.array([4, 4]), "scores": np.array([0.1, 0.9])}}
    evals = {"clean": {"per_video": {"a": {"labels": np.zeros(8, np.uint8), "scores": np.linspace(0, 1, 8)}}}}
    write_scores(stage, {"clean": videos}, evals)
    write_results(stage, {"test": {"auc_all": float("nan")}})
    write_pseudo_labels(tmp_path / "pseudo_labels.json", {"a": VideoPseudoLabels(8, np.array([[0, 4]]), np.array([1]))})

    assert read_scores(tmp_path / "scores.npz")["clean_scores"].tolist() == pytest.approx([0.1, 0.9])
    import json

    assert json.loads((tmp_path / "results.json").read_text())["test"]["auc_all"] is None  # NaN -> null
    record = VideoRecord(path="a", num_frames=8, label=1, intervals=[], line=1)
    assert read_pseudo_labels(tmp_path / "pseudo_labels.json", [record])["a"].labels.tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo_labels.json", "results.json", "scores.npz"]


class _RunsCommand:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_through_the_stage_is_refused(tmp_path, capsys):
    """A checkpoint whose unpickling would run a command, given to main.py --only_test --pretrained
    (the stage's own entry point and error handler, in this process)."""
    import torch

    import main as promptmil_main
    from training.stage import run_main

    from datasets.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", preset="small", seed=0)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCommand(marker)}, evil)
    argv = ["-cfg", "configs/synthetic/synthetic_ci.yaml", "--output", str(tmp_path / "out"), "--only_test",
            "--pretrained", str(evil), "--opts", "DATA.ROOT", str(data["root"]),
            "DATA.TRAIN_FILE", str(data["train_list"]), "DATA.VAL_FILE", str(data["test_list"])]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: promptmil_main.main(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    shown = captured.out + captured.err + (tmp_path / "out" / "log_rank0.txt").read_text()
    assert "UnsafeCheckpointError" in shown and "posix.system" in shown and str(evil) in shown, shown[-2000:]
    assert not marker.exists()


SNIPPET = """
import io, pickle, torch
from utils.io import atomic_path

def bad(path, obj):
    torch.save(obj, path)
    open(path, "w").write("x")
    path.write_text("x")
    torch.load(path)
    pickle.loads(b"")
    try:
        pass
    except:
        pass

def good(path, obj, log):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    open(log, "a").write("line")
    torch.load(path, weights_only=True)
"""


def test_the_scan_finds_what_it_looks_for():
    scan = Scan("utils/snippet.py")
    scan.visit(ast.parse(SNIPPET))
    writes = [where.split(" ")[1] for _, _, where in write_calls([scan])]
    assert writes == ["torch.save()", "open()", "path.write_text()"]
    assert {t for _, _, f, t, _, _ in scan.calls if f == "bad"} >= {"torch.load", "pickle.loads"}
    assert len(scan.bare_excepts) == 1
