"""The one exception type whose message is shown to the user as is, without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config value, missing file, unreadable weights...).

    The message is one short paragraph that names the problem and the fix.
    """


class TrialPruned(Exception):
    """A search trial stopped early by the pruner: recorded as PRUNED, not as a failure."""
