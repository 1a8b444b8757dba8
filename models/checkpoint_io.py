"""Read every supported checkpoint file safely; write state dicts as safetensors.

Supported inputs of ``read_state_dict(path) -> (state_dict, meta)``:
- ``.safetensors`` (this project's checkpoints), read with safetensors;
- OpenAI CLIP TorchScript archives: the archive's ``data.pkl`` is unpickled by a
  restricted reader (``TorchScriptReader``) that turns every ``__torch__.*`` module into an
  inert attribute holder and collects its tensors; no TorchScript code is loaded or run
  (``torch.load(weights_only=True)`` refuses these archives in torch 2.14 and
  ``torch.jit.load`` would compile the archive's code);
- bare state dicts and training checkpoints ``{'model': sd, ...}`` saved by torch.save:
  ``torch.load(weights_only=True)`` first; files embedding a yacs CfgNode (X-CLIP and
  FrameShield training pickles) go through ``models.safe_pickle``.
"""
import _compat_pickle
import pickle
import re
import zipfile
from pathlib import Path

import torch

from models import safe_pickle
from utils.errors import CheckpointError, UnsafeCheckpointError
from utils.io import atomic_path

SAFETENSORS_SUFFIX = ".safetensors"
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def read_state_dict(path) -> tuple[dict, dict]:
    """Return ``(state_dict, meta)`` from any supported file; meta['format'] says which.

    Raises CheckpointError naming the file when it is missing, truncated, corrupt or holds
    no state dict, and UnsafeCheckpointError when a pickle asks for a refused global.
    """
    path = Path(path)
    if not path.is_file():
        from models.sources import missing_weights_hint

        raise CheckpointError(f"checkpoint file {path} does not exist; {missing_weights_hint(path)}")
    try:
        if _looks_like_safetensors(path):
            state_dict, meta = _read_safetensors(path)
        elif zipfile.is_zipfile(path) and _torchscript_prefix(path) is not None:
            state_dict, meta = TorchScriptReader(path).state_dict(), {"format": "torchscript"}
        else:
            state_dict, meta = _read_torch_pickle(path)
    except CheckpointError as err:  # UnsafeCheckpointError included: name the file
        if str(path) in str(err):
            raise
        raise type(err)(f"checkpoint {path}: {err}") from None
    except Exception as err:  # any failure of a parser on a damaged file
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}; download or copy it again") from err
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-tensor entries {bad[:10]}")
    meta["path"] = str(path)
    return state_dict, meta


def save_safetensors(state_dict: dict, path, metadata: dict | None = None) -> None:
    """Write ``state_dict`` (tensors) to ``path`` atomically; shared storage is copied."""
    from safetensors.torch import save_file

    from safetensors import SafetensorError

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        except SafetensorError as err:  # its write errors: "I/O error: No space left on device (os error 28)"
            found = re.search(r"I/O error: (.*) \(os error (\d+)\)", str(err))
            if found is None:
                raise
            raise OSError(int(found.group(2)), found.group(1)) from err


def _looks_like_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte little-endian header length, then '{'."""
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        state_dict = {k: f.get_tensor(k) for k in f.keys()}
    return state_dict, {"format": "safetensors", "metadata": dict(metadata)}


def _read_torch_pickle(path: Path):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        fmt = "torch"
    except pickle.UnpicklingError:
        # weights_only refuses dict subclasses such as yacs CfgNode: use our allow-list.
        obj = torch.load(path, map_location="cpu", pickle_module=safe_pickle, weights_only=False)
        fmt = "legacy_pickle"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "lr_scheduler")}
        meta["format"] = fmt + "_training_checkpoint"
        return dict(obj["model"]), meta
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return dict(obj["state_dict"]), {"format": fmt + "_state_dict_wrapper"}
    if isinstance(obj, dict):
        return dict(obj), {"format": fmt + "_state_dict"}
    raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")


def _torchscript_prefix(path: Path) -> str | None:
    """The archive folder of a TorchScript zip (it has ``constants.pkl``), else None."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith("/constants.pkl") and name.count("/") == 1:
                return name.split("/")[0]
    return None


class ScriptModuleStub:
    """Inert stand-in for a pickled TorchScript module: holds its attributes, runs nothing."""

    script_class = ""


class TorchScriptReader:
    """Collect the weights of a TorchScript archive's module tree as a state dict.

    ``data.pkl`` describes the module tree as ``__torch__.*`` objects whose attributes are
    submodules and tensors; tensor bytes live in ``<prefix>/data/<key>``. Only inert stubs,
    OrderedDict and the tensor rebuild function are admitted while unpickling. Which tensor
    attributes are weights (parameters and buffers, as ``state_dict()`` would list them) is
    read from the ``__parameters__`` / ``__buffers__`` lines of each class in the archive's
    ``code/`` files, parsed as text and never executed; plain tensor attributes of scripted
    modules (such as a stored attention mask) are left out. A class without such a
    declaration contributes all its tensor attributes, which strict loading then checks.
    """

    def __init__(self, path: Path):
        self.path = path
        self.prefix = _torchscript_prefix(path)

    def state_dict(self) -> dict:
        with zipfile.ZipFile(self.path) as archive:
            names = set(archive.namelist())
            order = f"{self.prefix}/byteorder"
            if order in names and archive.read(order).strip() != b"little":
                raise CheckpointError(f"{self.path}: big-endian TorchScript archives are "
                                      f"not supported")
            unpickler = _ScriptUnpickler(archive, self.prefix,
                                         archive.read(f"{self.prefix}/data.pkl"))
            root = unpickler.load()
            weights = {key: _declared_weights(archive, self.prefix, key)
                       for key in unpickler.stub_classes}
        state = {}
        _collect_tensors(root, "", state, weights)
        return state


_DECLARATION = re.compile(r"^  (__parameters__|__buffers__) = \[(.*?)\]", re.MULTILINE)


def _declared_weights(archive: zipfile.ZipFile, prefix: str, class_key: str):
    """Names in a class's ``__parameters__`` + ``__buffers__``, or None when not declared."""
    module, _, name = class_key.rpartition(".")
    source_name = f"{prefix}/code/{module.replace('.', '/')}.py"
    if source_name not in archive.namelist():
        return None
    source = archive.read(source_name).decode("utf-8", errors="replace")
    match = re.search(rf"^class {re.escape(name)}\(Module\):\n((?:  .*\n|\n)*)", source,
                      re.MULTILINE)
    if match is None:
        return None
    found = _DECLARATION.findall(match.group(1))
    if len(found) != 2:
        return None
    return {item.strip().strip('"') for _, items in found for item in items.split(",")
            if item.strip()}


# TorchScript pickles typed lists/dicts through these helpers; here they only pass values on.
_JIT_CONTAINER_HELPERS = {
    "build_intlist": list, "build_doublelist": list, "build_boollist": list,
    "build_tensorlist": list, "restore_type_tag": lambda value, _type_name: value,
}


class _ScriptUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, data: bytes):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.stub_classes = {}

    def find_class(self, module: str, name: str):
        from collections import OrderedDict

        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module.startswith("__torch__.") or module == "__torch__":
            key = f"{module}.{name}"
            if key not in self.stub_classes:
                self.stub_classes[key] = type(name, (ScriptModuleStub,), {"script_class": key})
            return self.stub_classes[key]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _JIT_CONTAINER_HELPERS:
            return _JIT_CONTAINER_HELPERS[name]
        raise UnsafeCheckpointError(f"TorchScript archive asks for global '{module}.{name}', "
                                    f"which the safe reader does not admit")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r} in TorchScript archive")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unexpected storage type {dtype!r} in TorchScript archive")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * itemsize:
            raise CheckpointError(f"tensor data {key} is truncated")
        untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else \
            torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _collect_tensors(obj, prefix: str, out: dict, weights: dict) -> None:
    """Walk stub attributes depth-first, naming weight tensors by their attribute path."""
    declared = weights.get(type(obj).script_class)
    for name, value in vars(obj).items():
        if torch.is_tensor(value) and (declared is None or name in declared):
            out[prefix + name] = value
        elif isinstance(value, ScriptModuleStub):
            _collect_tensors(value, f"{prefix}{name}.", out, weights)
