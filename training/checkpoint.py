"""Training checkpoints that never execute code and are never half-written.

A checkpoint ``tag`` (``last``, ``best``, ``epoch_{N}``) in ``OUTPUT/checkpoints/`` is:
- ``{tag}.safetensors``: the model weights (unwrapped, CPU);
- ``{tag}.state.pt``: optimizer and scheduler state, epoch, step, best metric, the RNG
  states of the saving process and the caller's ``extra`` (tensors and plain types only,
  loadable with ``torch.load(weights_only=True)``);
- ``{tag}.yaml``: the merged config;
- ``{tag}.manifest.json``: size and SHA-256 of the three files, written last.
While ``tag`` is being overwritten, its previous valid version stays available as
``{tag}.previous`` (hard links, removed once the new manifest is written).
Every file is written atomically. A checkpoint counts as valid only when its manifest
exists and matches the files, so a kill at any point of a save (or a truncated copy)
leaves a checkpoint that is detected and skipped in favour of an older valid one.
"""
import datetime
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from training import checkpoint_checks as checks
from utils.errors import CheckpointError
from utils.io import atomic_write_json, atomic_write_text, output_error

logger = logging.getLogger("FrameShield.checkpoint")
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".state.pt", ".manifest.json", ".yaml")
PLAIN_TYPES = (int, float, bool, str, type(None), torch.Tensor)


def checkpoint_dir(output_dir):
    return Path(output_dir) / "checkpoints"


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state():
    """RNG states of python, numpy, torch CPU and the current CUDA device, as tensors/plain types."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state):
    """Undo :func:`capture_rng_state` (the CUDA state only when CUDA is available).

    The state comes from a checkpoint file, so a malformed one (edited, or from another
    program) is a CheckpointError, not a KeyError half-way through restoring.
    """
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as err:
        raise CheckpointError(f"the checkpoint's RNG state is malformed ({type(err).__name__}: {err}); resume "
                              f"from another checkpoint or start a fresh run ({checks.FIX_HINT})") from err


# ----------------------------------------------------------------------------- saving
def save_checkpoint(output_dir, tag, model, optimizer, scheduler, epoch, step, best_metric, cfg,
                    extra=None):
    """Write checkpoint ``tag`` atomically; returns the path of its ``.safetensors`` file.

    Call it on one process (rank 0). ``model`` may be wrapped in DDP. ``extra``: a dict of
    tensors and plain types (checked here, so an unloadable file is never written).
    """
    from models.checkpoint_io import save_safetensors

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise ValueError(f"checkpoint tag {tag!r} must be letters, digits, '_', '-' or '.'")
    folder = checkpoint_dir(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # OUTPUT/checkpoints is a file, or the disk refuses the folder
        raise output_error(folder, err) from err
    model = getattr(model, "module", model)
    state = {
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "best_metric": float(best_metric),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(),
        "extra": extra if extra is not None else {},
        "config_yaml": _config_yaml(cfg),
    }
    _check_plain(state, "checkpoint state")
    files = {
        "weights": folder / f"{tag}.safetensors",
        "state": folder / f"{tag}.state.pt",
        "config": folder / f"{tag}.yaml",
    }
    _keep_previous(folder, tag)
    save_safetensors(model.state_dict(), files["weights"],
                     metadata={"tag": tag, "epoch": str(epoch), "step": str(step)})
    _atomic_torch_save(state, files["state"])
    atomic_write_text(files["config"], state["config_yaml"])
    manifest = {
        "format_version": FORMAT_VERSION, "tag": tag, "epoch": int(epoch), "step": int(step),
        "best_metric": float(best_metric) if math.isfinite(best_metric) else None,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "files": {path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
                  for path in files.values()},
    }
    atomic_write_json(folder / f"{tag}.manifest.json", manifest)
    _remove_checkpoint(folder, f"{tag}.previous")  # also one left by an earlier failed save
    logger.info(f"saved checkpoint {files['weights']} (epoch {epoch}, step {step})")
    return str(files["weights"])


def _keep_previous(folder, tag):
    """Before ``tag`` is overwritten, hard-link its files (when valid) as ``{tag}.previous``.

    The files of ``tag`` are replaced one by one, so a kill during a save leaves ``tag``
    invalid; the linked copy (same bytes, own manifest) is then the checkpoint that
    auto-resume falls back to. An invalid ``tag`` (a save that already failed) is left alone,
    so the good copy of an earlier save is not replaced by a broken one.
    """
    base = folder / tag
    if not verify_checkpoint(base)[0]:
        return
    previous = f"{tag}.previous"
    manifest = read_manifest(base.with_name(tag + ".manifest.json"), tag)
    (folder / f"{previous}.manifest.json").unlink(missing_ok=True)  # invalid while relinked
    linked = {}
    where = f"checkpoint {base}"
    for name, entry in manifest["files"].items():
        source = checks.plain_file(folder, folder / name, where)
        target = checks.inside(folder, folder / (previous + name[len(tag):]), where)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError:  # a file system without hard links: copy instead
            shutil.copy2(source, target, follow_symlinks=False)
        linked[target.name] = entry
    atomic_write_text(folder / f"{previous}.manifest.json",
                      json.dumps({**manifest, "tag": previous, "files": linked}, indent=2) + "\n")


def _remove_checkpoint(folder, tag):
    """Delete checkpoint ``tag`` (manifest first, so a partial removal is never valid).

    Each name is checked to lie in ``folder`` first; a symbolic link is removed as a link
    (its target, wherever it is, is never touched).
    """
    where = f"removing checkpoint {folder / tag}"
    checks.inside(folder, folder / f"{tag}.manifest.json", where).unlink(missing_ok=True)
    for suffix in SUFFIXES:
        checks.inside(folder, folder / f"{tag}{suffix}", where).unlink(missing_ok=True)


def _atomic_torch_save(obj, path):
    """torch.save, its failed writes (a full disk) raised as the OSError they are: utils.io then
    turns it into an OutputError naming ``path``. (torch.save itself reports them as an
    "unexpected pos" RuntimeError of its zip writer.)"""
    from utils.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb", buffering=0) as handle:
            writer = _RecordingWriter(handle)
            try:
                torch.save(obj, writer)
            except RuntimeError as err:
                if writer.error is None:
                    raise
                raise writer.error from err


class _RecordingWriter(io.RawIOBase):
    """A file for torch.save that remembers the OSError of a failed write."""

    def __init__(self, handle):
        super().__init__()
        self.handle, self.error = handle, None

    def writable(self):
        return True

    def write(self, data):
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self):
        self.handle.flush()


def _config_yaml(cfg):
    if cfg is None:
        return ""
    from utils.config import config_to_yaml

    return config_to_yaml(cfg)


def _check_plain(obj, where):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} must be str or int to load with weights_only")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold only tensors, "
                        "numbers, strings, None and lists/tuples/dicts of them")


def _sha256(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- checking
def checkpoint_base(path):
    """``dir/tag`` for any of a checkpoint's files (or the base itself)."""
    path = Path(path)
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def checkpoint_file(path, suffix: str) -> Path:
    """One of a checkpoint's files: ``dir/tag<suffix>`` (suffix from SUFFIXES) for any of its files."""
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown checkpoint file suffix {suffix!r}; expected one of {SUFFIXES}")
    base = checkpoint_base(path)
    return base.with_name(base.name + suffix)


def read_manifest(manifest_path, tag):
    """The manifest of checkpoint ``tag``, validated before any path is built from it.

    Its ``files`` must name exactly the checkpoint's own files (``{tag}.safetensors``,
    ``{tag}.state.pt``, ``{tag}.yaml``: plain names in the manifest's folder, no path
    separators, ``..`` or absolute paths), each with an integer ``size`` and a hex
    ``sha256``; ``epoch`` and ``step`` are integers. Neither the manifest nor any of the
    files may be a symbolic link. Anything else raises CheckpointError naming the manifest
    (training.checkpoint_checks.check_manifest), so an edited manifest can never make a run
    read, link or delete a file outside its checkpoint folder.
    """
    manifest_path = Path(manifest_path)
    where = f"checkpoint manifest {manifest_path}"
    if manifest_path.is_symlink():
        raise CheckpointError(f"{where} is a symbolic link; checkpoint files must be plain files inside "
                              f"the checkpoint folder ({checks.FIX_HINT})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{where} is unreadable: {type(err).__name__}: {err}; {checks.FIX_HINT}") from err
    return checks.check_manifest(manifest, manifest_path, tag, FORMAT_VERSION)


def _refuse_constant(name):
    """json.loads accepts NaN/Infinity/-Infinity, which no file of ours holds: refuse them."""
    raise ValueError(f"{name} is not valid JSON")


def verify_checkpoint(path):
    """``(ok, problem)``: whether the checkpoint's files exist and match its (validated) manifest."""
    base = checkpoint_base(path)
    manifest_path = checkpoint_file(base, ".manifest.json")
    if not manifest_path.is_file():
        return False, f"{manifest_path} is missing (the save did not finish)"
    try:
        entries = read_manifest(manifest_path, base.name)["files"]
    except CheckpointError as err:
        return False, str(err)
    for name, expected in entries.items():
        file = base.parent / name
        if not file.is_file():
            return False, f"{file} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return False, f"{file} has {size} bytes, the manifest says {expected['size']} (truncated?)"
        if _sha256(file) != expected["sha256"]:
            return False, f"{file} does not match its SHA-256 in {manifest_path.name} (corrupt or replaced)"
    return True, ""


def list_checkpoints(output_dir):
    """[(manifest dict, weights path)] of every valid checkpoint; warns about invalid ones."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found, tags = [], set()
    for file in folder.iterdir():
        if file.name.startswith("."):
            continue
        base = checkpoint_base(file)
        if base != file:
            tags.add(base.name)
    for tag in sorted(tags):
        base = folder / tag
        ok, problem = verify_checkpoint(base)
        if not ok:
            logger.warning(f"skipping checkpoint '{tag}': {problem}")
            continue
        manifest = read_manifest(base.with_name(tag + ".manifest.json"), tag)
        found.append((manifest, str(base.with_name(tag + ".safetensors"))))
    return found


def find_auto_resume(output_dir):
    """Weights path of the most advanced valid checkpoint in OUTPUT/checkpoints, or None.

    Most advanced = highest (step, epoch); on a tie 'last' wins. Corrupt, truncated or
    unfinished checkpoints are skipped with a warning.
    """
    remove_stale_temp_files(output_dir)
    candidates = list_checkpoints(output_dir)
    if not candidates:
        return None
    manifest, path = max(candidates, key=lambda c: (c[0]["step"], c[0]["epoch"], c[0]["tag"] == "last"))
    logger.info(f"auto resume: {path} (epoch {manifest['epoch']}, step {manifest['step']})")
    return path


def remove_stale_temp_files(output_dir):
    """Delete temporary files a killed save left behind in OUTPUT/checkpoints; returns them.

    The one cleanup of utils.outdir (files named like utils.io's temporaries only, never a
    folder, never inside a folder another live run holds)."""
    from utils.outdir import remove_stale_temp_files as remove

    folder = checkpoint_dir(output_dir)
    stale = remove(folder) if folder.is_dir() else []
    for file in stale:
        logger.warning(f"removed {file}, left over from an interrupted checkpoint write")
    return stale


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path, model, optimizer=None, scheduler=None, strict=True):
    """Load weights (and optimizer/scheduler state when given) of a checkpoint.

    ``path``: any of the checkpoint's files or its ``dir/tag`` base. The files are checked
    against the manifest first (CheckpointError when they do not match; a warning when
    there is no manifest). RNG states are returned, not restored: call
    :func:`restore_rng_state` where the run needs them.
    Returns ``dict(epoch, step, best_metric, extra, rng, config_yaml, path)``
    (epoch/step/best_metric None when only weights exist and no state was asked for).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    base = checkpoint_base(path)
    weights = checkpoint_file(base, ".safetensors")
    state_file = checkpoint_file(base, ".state.pt")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} do not exist; pass a "
                              "checkpoints/<tag>.safetensors file written by a FrameShield run")
    if checkpoint_file(base, ".manifest.json").is_file():
        ok, problem = verify_checkpoint(base)
        if not ok:
            raise CheckpointError(f"checkpoint {weights} is damaged: {problem}; use an older "
                                  "checkpoint (TRAIN.AUTO_RESUME picks the newest valid one)")
    else:
        logger.warning(f"{weights} has no manifest; its files cannot be verified")
    try:
        state_dict = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {weights}: {err} (truncated or not safetensors)") from err
    _load_weights(getattr(model, "module", model), state_dict, weights, strict)

    result = {"epoch": None, "step": None, "best_metric": None, "extra": {}, "rng": None,
              "config_yaml": "", "path": str(weights)}
    if not state_file.is_file():
        if optimizer is not None or scheduler is not None:
            raise CheckpointError(f"{state_file} is missing: {weights} holds weights only and "
                                  "cannot resume training (use it with --pretrained)")
        return result
    state = checks.check_state(checks.load_state_file(state_file), state_file)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"{state_file} holds no optimizer state")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as err:
            raise CheckpointError(f"{state_file}: the optimizer state does not fit this model's "
                                  f"trainable parameters ({err}); was MODEL.FIX_TEXT or MODEL.TRAIN_VIDEO_HEAD changed? (checkpoints saved before MODEL.FIX_TEXT froze head_video and logit_scale resume with MODEL.TRAIN_VIDEO_HEAD True)") from err
    if scheduler is not None and state.get("scheduler") is not None:
        try:
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{state_file}: the scheduler state is malformed ({type(err).__name__}: {err}); "
                                  f"{checks.FIX_HINT}") from err
    for key in ("epoch", "step", "best_metric", "extra", "rng", "config_yaml"):
        result[key] = state.get(key, result[key])
    return result


def _load_weights(model, state_dict, source, strict):
    """Load ``state_dict`` into ``model`` after the checks every loader shares: shapes, keys,
    and (models.xclip.check_weight_values) no integer/bool or NaN/Inf values for float weights."""
    from models.xclip import check_weight_values

    expected = model.state_dict()
    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                   for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if wrong_shape or (strict and (missing or unexpected)):
        parts = []
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatch(es), e.g. {wrong_shape[:3]}")
        if strict and missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        raise CheckpointError(f"{source} does not fit this model (another architecture or "
                              f"MODEL.ARCH / DATA.NUM_FRAMES?): {'; '.join(parts)}")
    try:
        check_weight_values(state_dict, expected)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    model.load_state_dict(state_dict, strict=strict)
