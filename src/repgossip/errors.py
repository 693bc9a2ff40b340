"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a name, a value, a file. The message is one line that names the bad
    value and what would be valid; the CLI prints it without a traceback."""


class DistributedError(RuntimeError):
    """A peer of the distributed engine died, hung past `dist_timeout_s`, or the process group
    could not be formed. The CLI prints it in one line and exits with code 4."""
