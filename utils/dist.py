"""Process groups and DistributedDataParallel for every way the stages are launched.

- ``torchrun`` (and multi-node torchrun): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
  in the environment.
- ``python -m torch.distributed.launch``: the same variables, plus a ``--local-rank``
  argument; the LOCAL_RANK environment variable wins over the argument.
- A plain ``python main.py``: no variables, world size 1, no process group.
NCCL on CUDA, gloo on CPU. Collectives time out (default 10 minutes,
FRAMESHIELD_DIST_TIMEOUT seconds or the ``timeout_s`` argument) so one failing rank
makes the others fail instead of hanging forever.

A rank's one-line error under torchrun: ``training.stage.run_main`` hands a FrameShieldError to
:func:`record_error`, which writes it to the file torchrun's agent names in
TORCHELASTIC_ERROR_FILE (torch.distributed.elastic's error-file protocol). ``python -m
utils.dist TORCHRUN-FLAGS SCRIPT ARGS`` (what runners/launch.sh starts) is torchrun that, when a
rank fails, prints that rank's one-line error last instead of the launcher's 25-line
ChildFailedError traceback, and exits with the rank's exit code (2 for a FrameShieldError).
Plain ``torchrun`` still prints its traceback, with the one-line error as its "traceback" field.
"""
import contextlib
import datetime
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.errors import ConfigError
from utils.io import atomic_write_json

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


_info = DistInfo(0, 1, 0, torch.device("cpu"), False)


def _env_int(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from err


def init_distributed(local_rank_arg=-1, timeout_s=None, backend=None, use_cuda=None):
    """Set up this process's rank and device; start the process group when world size > 1.

    local_rank_arg: the ``--local-rank`` value of torch.distributed.launch (-1 = none).
    timeout_s: collective timeout in seconds (default FRAMESHIELD_DIST_TIMEOUT or 600).
    backend: override 'nccl'/'gloo'. use_cuda: default torch.cuda.is_available().
    Returns the DistInfo, also kept for get_rank()/get_world_size()/current().
    """
    global _info
    world_size = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK")
    if local_rank is None:
        local_rank = local_rank_arg if local_rank_arg is not None and local_rank_arg >= 0 else 0
    if world_size > 1 and rank is None:
        raise ConfigError(f"WORLD_SIZE={world_size} is set but RANK is not; launch with torchrun "
                          "or python -m torch.distributed.launch")
    rank = rank or 0
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if use_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"local rank {local_rank} needs GPU {local_rank} but only {count} "
                              "GPU(s) are visible; ask for at most that many processes per node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get("FRAMESHIELD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        dist.init_process_group(
            backend=backend or ("nccl" if use_cuda else "gloo"), init_method="env://",
            rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    _info = DistInfo(rank, world_size, local_rank, device, world_size > 1)
    return _info


def current():
    """The DistInfo of the last init_distributed call (single-process CPU before any)."""
    return _info


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[_info.local_rank])
        else:
            dist.barrier()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; ``[obj]`` without a process group."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src=0):
    """The ``obj`` of rank ``src`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag):
    """True on every rank when ``flag`` is true on at least one (a stop decision all share)."""
    if not dist.is_initialized():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def reduce_mean(tensor):
    """Mean of ``tensor`` over ranks (a copy; the input is unchanged)."""
    if not dist.is_initialized():
        return tensor.clone()
    out = tensor.detach().clone().to(_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / dist.get_world_size()).to(tensor.device)


def _collective_device():
    return _info.device if dist.get_backend() == "nccl" else torch.device("cpu")


def wrap_model(model, info=None, find_unused_parameters=False):
    """Move ``model`` to the device; wrap it in DistributedDataParallel when world size > 1."""
    info = info or _info
    model = model.to(info.device)
    if info.world_size <= 1:
        return model
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap_model(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_context(model, sync):
    """Context for one micro-step's backward: no DDP gradient all-reduce unless ``sync``.

    Use ``sync=True`` on the last micro-step of each accumulation window.
    """
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def seed_everything(seed):
    """Seed python, numpy and torch (CPU and CUDA); call with SEED + rank."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


SHUTDOWN_WAIT_S = 15


def cleanup():
    """Destroy the process group (if any) and forget the rank information.

    With gloo every rank first waits (at most SHUTDOWN_WAIT_S) for the others to get here: a
    rank that tears its connections down while a peer still uses them makes that peer abort
    in gloo's threads ("terminate called without an active exception", exit code -6) after
    its work is done. Called while an exception propagates (a ``finally`` after a failure),
    it does not wait: the peers are failing too, or will when this rank's connections close.
    """
    global _info
    if dist.is_initialized():
        failing = sys.exc_info()[0] is not None
        if not failing and dist.get_backend() == "gloo" and dist.get_world_size() > 1:
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=SHUTDOWN_WAIT_S))
            except RuntimeError as err:  # a peer failed or left: nothing to wait for
                print(f"rank {dist.get_rank()}: not every rank reached the shutdown ({err}); closing anyway",
                      file=sys.stderr)
        dist.destroy_process_group()
    _info = DistInfo(0, 1, 0, torch.device("cpu"), False)


# ---------------------------------------------------------------- torchrun's error file
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
_FRAMESHIELD_MARK = "frameshield"


def record_error(message: str) -> None:
    """Write ``message`` (the one-line error) where torchrun's agent reads this rank's failure.

    Only under torchrun/torch.distributed.launch (TORCHELASTIC_ERROR_FILE set, a file in the
    launcher's own temporary folder); a plain process writes nothing. The layout is the
    ErrorHandler's (message dict with extraInfo.timestamp), so torch reads it without
    warnings; the ``frameshield`` key tells :func:`torchrun_main` the message is ours.
    """
    path = os.environ.get(ERROR_FILE_ENV, "")
    if not path:
        return
    data = {"message": {"message": message, "errorCode": 2, _FRAMESHIELD_MARK: True,
                        "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        atomic_write_json(path, data)
    except OSError as err:  # (an OutputError) the message was printed already; only the launcher's summary lacks it
        print(f"warning: could not write the error for torchrun to {path}: {err}", file=sys.stderr)


def _frameshield_message(failure) -> str:
    """The one-line error a rank recorded with :func:`record_error`, or '' (a crash, a signal)."""
    data = getattr(failure, "error_file_data", None)
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict) and message.get(_FRAMESHIELD_MARK) and isinstance(message.get("message"), str):
        return message["message"]
    return ""


def describe_child_failure(err) -> tuple[str, int]:
    """(the lines to print last, the exit code) for torchrun's ChildFailedError ``err``.

    The root cause (first failed rank) comes last: its one-line error when it raised a
    FrameShieldError (exit code 2), else its exit code or signal, pointing at its output above.
    """
    root_rank, root = err.get_first_failure()
    message = _frameshield_message(root)
    lines = []
    for rank, failure in sorted(err.failures.items()):
        text = _frameshield_message(failure) or _exit_text(failure)
        if rank != root_rank and not (message and text == message):  # every rank read the same bad config
            lines.append(f"[launcher] rank {rank} also failed: {text}")
    if message:
        lines.append(f"error: {message} (rank {root_rank})")
    else:
        lines.append(f"error: rank {root_rank} failed: {_exit_text(root)}; its traceback or message is above")
    code = root.exitcode if root.exitcode > 0 else 128 - root.exitcode if root.exitcode < 0 else 1
    return "\n".join(lines), code


def _exit_text(failure) -> str:
    if failure.exitcode < 0:
        return f"killed by signal {-failure.exitcode} ({failure.signal_name()})"
    return f"exit code {failure.exitcode}"


def torchrun_main(argv: list[str]) -> int:
    """torchrun (``torch.distributed.run``) with ``argv``; a failed rank ends it with that
    rank's one-line error as the last line and its exit code, not the launcher's traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        text, code = describe_child_failure(err)
        print(text, file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main(sys.argv[1:]))
