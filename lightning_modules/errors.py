"""The one exception type for user mistakes.

`main.py` prints a `ConfigError` as a single line and exits non-zero, without a traceback;
any other exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A bad value, file or layout supplied by the user; the message names it."""
