"""User-facing errors: the command line prints their message on one line and exits non-zero.

Only these classes are the user's to fix. Anything else (a built-in KeyError, OSError, ...) is a bug and keeps its
traceback; where an OSError is the user's (a missing input, a full disk) it is turned into one of these where it
happens.
"""


class ReproError(Exception):
    """A problem the user can fix (bad input, missing or corrupt file, bad config); never a bug."""

    exit_code = 2


class DataError(ReproError):
    """An input (dataset source, archive, prepared folder, run file) is missing, unreadable, corrupt or unsafe."""


class OutputError(ReproError):
    """An output cannot be written: the disk or quota is full, or writing there is not allowed."""


class ConfigError(ReproError):
    """A configuration value is wrong; the message names the key."""


class UnknownModelError(ConfigError):
    """A model name (or model option) the catalogue does not know; the message lists what it knows."""


class TrainingDiverged(ReproError):
    """The loss became NaN or infinite."""

    exit_code = 3


class Interrupted(ReproError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint; rerunning resumes it."""

    # EX_TEMPFAIL: schedulers and wrappers can tell "requeue me" from a failure.
    exit_code = 75
