"""The one base class of mistakes a user can fix: a bad option, a missing file, logs that break the contract.

The `deepbandit` command prints such an error as one or two lines on stderr and exits with code 2; any other
exception is a bug in deepbandit and keeps its traceback. Library callers catch them like any ValueError.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """An option value, or a combination of options, that cannot work."""


class DataError(UserError, ValueError):
    """Logs or files that cannot be used as given: the message names the file, column and row."""
