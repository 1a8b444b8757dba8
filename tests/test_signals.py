"""The SIGTERM stop flag: duplicates are absorbed, a later repeat still kills."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    from utils import signals
    signals.DUPLICATE_WINDOW_S = {window}
    signals.install_stop_handler()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)   # e.g. scancel + torchrun forwarding
    print("alive", signals.stop_requested(), flush=True)
    time.sleep({pause})
    os.kill(os.getpid(), signal.SIGTERM)
    print("survived the repeat", flush=True)
""")


def _run(window, pause):
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    code = SCRIPT.format(root=root, window=window, pause=pause)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_duplicate_sigterm_is_absorbed_and_the_flag_set():
    out = _run(window=30.0, pause=0.0)
    assert out.returncode == 0, out.stderr
    assert "alive True" in out.stdout and "survived the repeat" in out.stdout


def test_sigterm_repeated_after_the_window_kills():
    out = _run(window=0.2, pause=0.5)
    assert "alive True" in out.stdout
    assert "survived the repeat" not in out.stdout
    assert out.returncode == -15
