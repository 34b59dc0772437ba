"""The one exception type for user mistakes.

`main.py` prints a `ConfigError` as a single line and exits non-zero, without a traceback;
any other exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A bad value, file or layout supplied by the user; the message names it."""


def first_line(err: BaseException) -> str:
    """The gist of a library's exception for a one-line message: its first sentence."""
    return (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
