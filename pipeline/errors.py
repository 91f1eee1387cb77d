"""The one exception type whose message is shown to the user as is, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreadable weights...).

    The message is one short paragraph that names the problem and the fix.
    """

    exit_code = 2


class Interrupted(UserError):
    """Training was stopped by a signal (SIGTERM, Ctrl-C); the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        # 128 + the signal number: what a shell reports for a process ended by that signal.
        self.exit_code = 128 + signum


class TrialPruned(Exception):
    """A search trial stopped early by the pruner: recorded as PRUNED, not as a failure."""
