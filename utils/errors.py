"""The project's own error types.

Every error a user can cause (a bad list line, a YAML typo, a truncated checkpoint, ...)
is raised as one of these, with a message that names the file, line or key and says what
to do. Tests and the fuzz tests catch ``FrameShieldError``; anything else escaping from
the parsers is a bug.
"""


class FrameShieldError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(FrameShieldError, ValueError):
    """A YAML file, an ``--opts`` pair or a command-line flag is wrong."""


class ListFileError(FrameShieldError, ValueError):
    """A dataset list file or labels CSV is malformed (names the file and line)."""


class DataError(FrameShieldError, RuntimeError):
    """A video, frame folder or frame on disk is missing, short or unreadable."""


class CheckpointError(FrameShieldError, RuntimeError):
    """A checkpoint cannot be loaded: wrong architecture, truncated, or unsafe."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint asks for a global outside the restricted allow-list."""


class TrainingError(FrameShieldError, RuntimeError):
    """Training cannot go on (a non-finite loss, ...); names the step."""


class OutputError(FrameShieldError, OSError):
    """The output folder cannot be used or written: it is a file, read-only, full, or in use
    by another run (names the path and what to do). An OSError too, so code that handles
    OSError still sees it."""
