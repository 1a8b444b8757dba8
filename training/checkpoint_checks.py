"""Validation of what a run reads back from its checkpoint folder (issue 15, classes 1 and 4).

A checkpoint's manifest and ``state.pt`` are files a user can edit, copy or truncate. Every
value read from them is checked here before it is used, so a malformed file is a
CheckpointError that names it (never a KeyError/TypeError from deep inside a resumed run),
and no path built from a file's contents can point outside the checkpoint folder (an edited
manifest must never make a run link, rename or delete a file elsewhere).
"""
import math
from pathlib import Path

from utils.errors import CheckpointError

FIX_HINT = "delete this checkpoint (auto-resume then uses an older valid one) or restore it from a copy"


def is_int(value) -> bool:
    """A JSON/pickle integer (bool is an int in Python, but never a valid count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inside(folder: Path, path: Path, where: str) -> Path:
    """``path`` after checking that it names an entry directly in ``folder`` (resolved).

    Checked before a file is linked, renamed or deleted: a symbolic link or ``..`` in a name
    that leads out of ``folder`` raises CheckpointError naming ``where``. A symbolic link
    itself is allowed only when it is to be deleted (unlinking a link never touches its target),
    so callers that read or link a file also check :func:`plain_file`.
    """
    folder, path = Path(folder), Path(path)
    if path.parent.resolve() != folder.resolve() or path.name in ("", ".", ".."):
        raise CheckpointError(f"{where}: {path} is not a file of the checkpoint folder {folder}; "
                              f"refusing to touch it ({FIX_HINT})")
    return path


def plain_file(folder: Path, path: Path, where: str) -> Path:
    """``path`` when it is a regular file (not a symbolic link) resolving into ``folder``."""
    inside(folder, path, where)
    if path.is_symlink() or path.resolve().parent != Path(folder).resolve():
        raise CheckpointError(f"{where}: {path} is a symbolic link; checkpoint files must be plain files "
                              f"inside the checkpoint folder ({FIX_HINT})")
    return path


def check_manifest(manifest, manifest_path: Path, tag: str, format_version: int) -> dict:
    """The parsed manifest of checkpoint ``tag`` after checking every field a run uses.

    ``files`` must name exactly ``{tag}.safetensors``, ``{tag}.state.pt`` and ``{tag}.yaml``
    (plain names in the manifest's folder), each a regular file that is not a symbolic link,
    with an integer ``size`` >= 0 and a 64-digit hex ``sha256``; ``epoch`` and ``step`` are
    integers >= 0, ``tag`` is the checkpoint's own, ``best_metric`` a number or null.
    """
    where = f"checkpoint manifest {manifest_path}"
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{where} is not a JSON object; {FIX_HINT}")
    _check_epoch_and_step(manifest, where)
    version = manifest.get("format_version", format_version)
    if not is_int(version) or not 1 <= version <= format_version:
        raise CheckpointError(f"{where}: 'format_version' {version!r} is not one this FrameShield reads "
                              f"(1..{format_version}); use the FrameShield version that wrote it")
    if manifest.get("tag", tag) != tag:
        raise CheckpointError(f"{where}: 'tag' is {manifest.get('tag')!r} but the file belongs to checkpoint "
                              f"{tag!r}; the manifest was copied from another checkpoint; {FIX_HINT}")
    best = manifest.get("best_metric")
    if best is not None and not is_real(best):
        raise CheckpointError(f"{where}: 'best_metric' must be a number or null, got {best!r}; {FIX_HINT}")
    files = manifest.get("files")
    expected_names = {f"{tag}{suffix}" for suffix in (".safetensors", ".state.pt", ".yaml")}
    if not isinstance(files, dict) or set(files) != expected_names:
        names = sorted(map(str, files)) if isinstance(files, dict) else files
        raise CheckpointError(f"{where}: 'files' must name exactly {sorted(expected_names)} (in the manifest's "
                              f"folder), got {names!r}; the manifest was edited or belongs to another checkpoint")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and is_int(entry.get("size")) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64
                and all(c in "0123456789abcdef" for c in entry["sha256"])):
            raise CheckpointError(f"{where}: the entry of {name} needs an integer 'size' >= 0 and a 64-digit hex "
                                  f"'sha256', got {entry!r}; {FIX_HINT}")
        plain_file(manifest_path.parent, manifest_path.parent / name, where)
    manifest.setdefault("tag", tag)
    return manifest


def load_state_file(state_file: Path, mmap: bool = False):
    """``torch.load(state_file, weights_only=True)``; any failure is a CheckpointError naming it.

    torch's weights-only unpickler reports a damaged file with whatever its parser hits
    (UnpicklingError, EOFError, but also IndexError, KeyError or AssertionError on random
    bytes), so every exception of the parser is translated here, as models.checkpoint_io
    does for weights files.
    """
    import torch

    try:
        return torch.load(state_file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # any failure of the parser on a damaged file (see the docstring)
        raise CheckpointError(f"cannot read {state_file} (truncated or corrupt?): {type(err).__name__}: {err}; "
                              f"{FIX_HINT}") from err


def check_threshold(value, where: str):
    """A stored score threshold: None (none stored) or a number within [0, 1] -> float or None.

    The training stages store the max-F1 threshold of P(abnormal) scores, so anything else
    (a string, a bool, NaN, 1.7) means the file was edited or damaged: CheckpointError.
    """
    if value is None:
        return None
    if not is_real(value):
        raise CheckpointError(f"{where}: the score threshold must be a number within [0, 1], got {value!r} "
                              f"({type(value).__name__}); pass --threshold T to override it, or {FIX_HINT}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise CheckpointError(f"{where}: the score threshold {value} is not within [0, 1] (a probability); "
                              f"pass --threshold T to override it, or {FIX_HINT}")
    return value


_STATE_TYPES = {"optimizer": (dict, type(None)), "scheduler": (dict, type(None)), "extra": (dict,),
                "rng": (dict, type(None)), "config_yaml": (str,)}
_EXTRA_TYPES = {"history": (list,), "best": (dict,), "threshold": (dict, type(None)), "rng": (list, type(None))}


def check_state(state, state_file: Path) -> dict:
    """A loaded ``{tag}.state.pt`` after checking the fields a run reads back (module doc).

    The training loop's own ``extra`` keys (batch_in_epoch, history, best, threshold, rng,
    score_threshold) are checked too, so a resumed run never fails on them half-way.
    """
    where = f"checkpoint state {state_file}"
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a checkpoint state dict; {FIX_HINT}")
    _check_epoch_and_step(state, where)
    if "best_metric" in state and not is_real(state["best_metric"]):
        raise CheckpointError(f"{where}: 'best_metric' must be a number, got {state['best_metric']!r}; {FIX_HINT}")
    _check_types(state, _STATE_TYPES, where)
    extra = state.get("extra", {})
    _check_types(extra, _EXTRA_TYPES, f"{where}, 'extra'")
    batch = extra.get("batch_in_epoch", 0)
    if not is_int(batch) or batch < 0:
        raise CheckpointError(f"{where}: 'extra.batch_in_epoch' must be a non-negative integer, got {batch!r}; "
                              f"{FIX_HINT}")
    check_threshold(extra.get("score_threshold"), f"{where}, 'extra.score_threshold'")
    check_threshold((extra.get("threshold") or {}).get("f1"), f"{where}, 'extra.threshold.f1'")
    return state


def _check_epoch_and_step(values: dict, where: str) -> None:
    """``epoch`` and ``step`` of a manifest or state file: integers >= 0."""
    for key in ("epoch", "step"):
        if not is_int(values.get(key)) or values[key] < 0:
            raise CheckpointError(f"{where}: '{key}' must be a non-negative integer, got {values.get(key)!r}; "
                                  f"{FIX_HINT}")


def _check_types(values: dict, types: dict, where: str) -> None:
    for key, allowed in types.items():
        if key in values and not isinstance(values[key], allowed):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise CheckpointError(f"{where}: '{key}' must be {names}, got {type(values[key]).__name__}; {FIX_HINT}")
