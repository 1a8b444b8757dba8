import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_project_logger():
    """Keep the shared "FrameShield" logger visible to ``caplog`` in every test.

    Stages called in-process (``utils.logger.create_logger``) attach handlers and set
    ``propagate = False``; each test runs with propagation on and gets the logger's
    earlier state back afterwards, minus any handler the test added.
    """
    log = logging.getLogger("FrameShield")
    saved = (list(log.handlers), log.propagate, log.level)
    log.propagate = True  # also when a module-scoped fixture already made a logger
    yield
    for handler in log.handlers:
        if handler not in saved[0]:
            handler.close()
    log.handlers[:] = saved[0]
    log.propagate, log.level = saved[1], saved[2]
