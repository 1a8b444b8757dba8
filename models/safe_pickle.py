"""Restricted unpickler for legacy training checkpoints (pass as ``pickle_module=``).

X-CLIP and FrameShield training pickles embed a yacs ``CfgNode`` (a dict subclass), which
``torch.load(weights_only=True)`` cannot rebuild. This module lets
``torch.load(path, weights_only=False, pickle_module=safe_pickle)`` read them while
admitting only the globals such files hold: tensor/parameter rebuild functions (storages
are resolved by torch itself), OrderedDict, set, CfgNode, numpy scalars and dtypes, and
``_codecs.encode`` (how protocol 2 stores bytes). Any other global raises
``UnsafeCheckpointError`` naming it, before anything is called.
"""
import _compat_pickle
import pickle
from functools import lru_cache

from utils.errors import UnsafeCheckpointError

# Re-exported so torch.load can use this module like the ``pickle`` module.
Pickler = pickle.Pickler
dump = pickle.dump
dumps = pickle.dumps
UnpicklingError = pickle.UnpicklingError
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL


@lru_cache(maxsize=1)
def allowed_globals() -> dict:
    """(module, name) -> object for every global a legacy checkpoint may reference."""
    import _codecs
    from collections import OrderedDict

    import numpy
    import torch._utils
    from yacs.config import CfgNode

    allowed = {
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"):
            torch._utils._rebuild_parameter_with_state,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("yacs.config", "CfgNode"): CfgNode,
        ("numpy", "dtype"): numpy.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    scalar = numpy._core.multiarray.scalar
    allowed[("numpy.core.multiarray", "scalar")] = scalar  # files written with numpy 1.x
    allowed[("numpy._core.multiarray", "scalar")] = scalar
    return allowed


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose ``find_class`` admits only ``allowed_globals()``."""

    def find_class(self, module: str, name: str):
        # protocol-2 pickles name Python 2 modules ('__builtin__'): use today's names
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return allowed_globals()[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refused to unpickle global '{module}.{name}': checkpoints may only hold "
                f"tensors, dicts, yacs CfgNode and numpy scalars. If you trust this file, "
                f"re-save its state dict with torch.save(state_dict) or as .safetensors"
            ) from None


def load(file, **kwargs):
    """Restricted counterpart of ``pickle.load`` (torch's legacy format calls it)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    import io

    return load(io.BytesIO(data), **kwargs)
