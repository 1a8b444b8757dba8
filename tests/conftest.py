import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_project_logger():
    """Undo what ``utils.logger.create_logger`` does to the shared "FrameShield" logger.

    Stages called in-process attach handlers and set ``propagate = False``; without this
    reset, a later test's ``caplog`` would no longer see the project's warnings.
    """
    log = logging.getLogger("FrameShield")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    for handler in log.handlers:
        if handler not in saved[0]:
            handler.close()
    log.handlers[:] = saved[0]
    log.propagate, log.level = saved[1], saved[2]
