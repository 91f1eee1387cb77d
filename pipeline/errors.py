"""The one exception type whose message is shown to the user as is, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreadable weights...).

    The message is one short paragraph that names the problem and the fix.
    """

    exit_code = 2


# What follows the traceback of an unexpected exception: it is ours to fix, not the user's.
BUG_REPORT = (
    "This is a bug in the pipeline, not a mistake in your settings. Please report it as "
    "CONTRIBUTING.md ('Reporting a bug') describes, with the command line, the traceback above "
    "and the output of python -m pipeline.doctor; a run that had started is recorded FAILED "
    "with the error as its `error` tag."
)


class Interrupted(UserError):
    """Training was stopped by a signal (SIGTERM, Ctrl-C); the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        # 128 + the signal number: what a shell reports for a process ended by that signal.
        self.exit_code = 128 + signum


def first_line(exc: BaseException) -> str:
    """An exception's first line, to quote in a message (its type where it has no text)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class TrialPruned(Exception):
    """A search trial stopped early by the pruner: recorded as PRUNED, not as a failure."""
