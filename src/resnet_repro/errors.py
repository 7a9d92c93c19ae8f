"""User-facing errors: the command line prints their message on one line and exits non-zero."""


class ReproError(Exception):
    """A problem the user can fix (bad input, missing or corrupt file, bad config); never a bug."""

    exit_code = 2


class DataError(ReproError):
    """A dataset source, archive or prepared folder is missing, corrupt or unsafe."""


class ConfigError(ReproError):
    """A configuration value is wrong; the message names the key."""


class TrainingDiverged(ReproError):
    """The loss became NaN or infinite."""

    exit_code = 3


class Interrupted(ReproError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint; rerunning resumes it."""

    # EX_TEMPFAIL: schedulers and wrappers can tell "requeue me" from a failure.
    exit_code = 75
