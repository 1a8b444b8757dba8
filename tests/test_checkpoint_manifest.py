"""An edited checkpoint manifest can never make a run touch a file outside its checkpoint
folder, and a malformed one is refused with a message naming it (issue 15, class 1 and 4)."""
import hashlib
import json
import os

import pytest

from tests.test_checkpoint import save, trained
from training import checkpoint as ckpt


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_manifest(folder, tag, change):
    path = folder / f"{tag}.manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def run(tmp_path):
    """An output folder with a valid 'last' checkpoint and a victim file beside the folder."""
    out = tmp_path / "out"
    model, opt, sched = trained()
    save(out, "last", model, opt, sched)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return out, out / "checkpoints", victim, (model, opt, sched)


@pytest.mark.parametrize("name", ["last/../../../victim.txt", "../../victim.txt", "ABSOLUTE"])
def test_manifest_naming_a_file_outside_is_refused_and_nothing_is_deleted(run, name):
    out, folder, victim, (model, opt, sched) = run
    target = str(victim) if name == "ABSOLUTE" else name

    def point_outside(manifest):
        manifest["files"][target] = {"size": victim.stat().st_size, "sha256": sha(victim)}
        del manifest["files"]["last.yaml"]

    manifest = edit_manifest(folder, "last", point_outside)
    ok, problem = ckpt.verify_checkpoint(folder / "last.safetensors")
    assert not ok and str(manifest) in problem and "files" in problem
    assert ckpt.find_auto_resume(out) is None  # the damaged checkpoint is skipped, not used
    save(out, "last", model, opt, sched, epoch=2, step=4)  # the next save would link and replace files
    assert victim.read_text() == "precious"
    assert ckpt.verify_checkpoint(folder / "last.safetensors")[0]  # a fresh, valid checkpoint


def test_symlinked_checkpoint_file_is_refused(run):
    out, folder, victim, _ = run
    (folder / "last.yaml").unlink()
    os.symlink(victim, folder / "last.yaml")
    edit_manifest(folder, "last", lambda m: m["files"].update(
        {"last.yaml": {"size": victim.stat().st_size, "sha256": sha(victim)}}))
    ok, problem = ckpt.verify_checkpoint(folder / "last.safetensors")
    assert not ok and "symbolic link" in problem
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(files=["last.safetensors"]), "'files' must name exactly"),
    (lambda m: m.pop("step"), "'step' must be a non-negative integer"),
    (lambda m: m.update(epoch="1"), "'epoch' must be a non-negative integer"),
    (lambda m: m["files"]["last.yaml"].update(size="12"), "integer 'size'"),
    (lambda m: m["files"]["last.yaml"].update(sha256="x" * 64), "hex 'sha256'"),
])
def test_malformed_manifest_is_refused_with_its_name(run, change, match):
    out, folder, _, _ = run
    manifest = edit_manifest(folder, "last", change)
    ok, problem = ckpt.verify_checkpoint(folder / "last.safetensors")
    assert not ok and match in problem and str(manifest) in problem
    assert ckpt.find_auto_resume(out) is None


def test_manifest_that_is_not_an_object_is_refused(run):
    out, folder, _, _ = run
    (folder / "last.manifest.json").write_text("[1, 2, 3]")
    ok, problem = ckpt.verify_checkpoint(folder / "last.safetensors")
    assert not ok and "not a JSON object" in problem
