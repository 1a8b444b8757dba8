"""Graceful stop on SIGTERM (what cluster schedulers send before killing a job).

The handler only sets a flag. Training loops check it at step boundaries, save a
resumable checkpoint and exit cleanly; with several ranks, ``stop_requested(sync=True)``
makes every rank take the same decision at the same step so none is left waiting in a
collective.

A repeat of the signal within ``DUPLICATE_WINDOW_S`` seconds is ignored: a scheduler that
signals every process (SLURM ``scancel``) and torchrun, which forwards the signal to its
ranks, together deliver it twice at once, and dying on the copy would lose the
checkpoint. A repeat after that window gets the default action (the process dies), so a
stuck job can still be killed by sending the signal again.
"""
import logging
import os
import signal
import time

DUPLICATE_WINDOW_S = 5.0
_stop = {"requested": False, "signal": None, "time": 0.0}
_previous = {}
logger = logging.getLogger("FrameShield.signals")


def _handler(signum, frame):
    if _stop["requested"]:
        if time.monotonic() - _stop["time"] < DUPLICATE_WINDOW_S:
            return  # the same stop delivered twice (scheduler + launcher)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stop["requested"] = True
    _stop["signal"] = signum
    _stop["time"] = time.monotonic()
    logger.warning(f"received {signal.Signals(signum).name}: stopping at the next step boundary "
                   f"after saving a checkpoint (send it again after {DUPLICATE_WINDOW_S:g} s to die at once)")


def install_stop_handler(signals=(signal.SIGTERM,)):
    """Route the given signals to the stop flag (main thread only); returns nothing."""
    for signum in signals:
        if signum not in _previous:
            _previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _handler)


def uninstall_stop_handler():
    """Restore the handlers that were there before :func:`install_stop_handler`."""
    for signum, previous in list(_previous.items()):
        signal.signal(signum, previous)
        del _previous[signum]


def request_stop():
    """Set the flag by hand (tests, or a NaN guard that wants the same exit path)."""
    _stop["requested"] = True


def reset_stop():
    _stop["requested"] = False
    _stop["signal"] = None


def stop_requested(sync=False):
    """Whether to stop now. ``sync=True`` (all ranks must call it): true everywhere when any
    rank got the signal."""
    if sync:
        from utils import dist

        return dist.any_rank(_stop["requested"])
    return _stop["requested"]


def stop_signal():
    """The signal number that set the flag (None when none or set by hand)."""
    return _stop["signal"]
