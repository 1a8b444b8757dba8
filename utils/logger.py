"""Console + per-rank file logging, and progress bars on rank 0.

Rank 0 prints to the console (coloured with termcolor, written through tqdm so progress
bars are not broken); every rank appends to ``OUTPUT/log_rank{r}.txt``. Module loggers
named ``FrameShield.<module>`` (metrics, checkpoint, signals) propagate to these handlers.
"""
import logging
import sys
from pathlib import Path

from termcolor import colored
from tqdm import tqdm

from utils.io import output_error

FILE_FORMAT = "[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _TqdmConsoleHandler(logging.StreamHandler):
    """Write records with tqdm.write so they appear above running progress bars."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except (OSError, ValueError):
            self.handleError(record)


class _LogFile(logging.FileHandler):
    """``log_rank{r}.txt``. A failed write (a full disk) is said once on stderr, instead of
    logging's traceback for every record; the run's own writes then fail with an OutputError."""

    def handleError(self, record):
        if getattr(self, "_failed", False):
            return
        self._failed = True
        print(f"warning: cannot write the log file {self.baseFilename}: {sys.exc_info()[1]}; "
              "later log lines go to the console only", file=sys.stderr)


class _ColourFormatter(logging.Formatter):
    COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}

    def format(self, record):
        head = colored(f"[{self.formatTime(record, DATE_FORMAT)} {record.name}]", "green")
        where = colored(f"({record.filename} {record.lineno})", "yellow")
        level = record.levelname
        if record.levelno in self.COLOURS:
            level = colored(level, self.COLOURS[record.levelno], attrs=["bold"])
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{head}{where}: {level} {message}"


def create_logger(output_dir, rank, name="FrameShield"):
    """Logger ``name`` with a console handler on rank 0 and a file ``log_rank{rank}.txt``.

    Calling it again replaces the handlers it added before (no duplicated lines).
    """
    output_dir = Path(output_dir)
    log_file = output_dir / f"log_rank{rank}.txt"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFile(log_file, mode="a", encoding="utf-8")
    except OSError as err:
        raise output_error(log_file, err) from err
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_frameshield", False):
            logger.removeHandler(handler)
            handler.close()
    if rank == 0:
        console = _TqdmConsoleHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(_ColourFormatter())
        console._frameshield = True
        logger.addHandler(console)
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT, DATE_FORMAT))
    file_handler._frameshield = True
    logger.addHandler(file_handler)
    return logger


def progress(iterable=None, total=None, desc=None, rank=0, **kwargs):
    """tqdm bar on rank 0 only (others iterate silently); shows ETA and rate."""
    return tqdm(iterable, total=total, desc=desc, disable=rank != 0, dynamic_ncols=True,
                leave=False, file=sys.stdout, **kwargs)
