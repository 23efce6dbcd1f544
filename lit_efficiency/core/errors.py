"""Errors for bad user input.

The CLI turns any :class:`LitEfficiencyError` into one line on stderr and a non-zero exit, so the message
must be self-contained: name the file and line, the config field or the env var the user has to fix.
"""


class LitEfficiencyError(Exception):
    """Base class of the errors the CLI reports as one line (no traceback)."""


class DataError(LitEfficiencyError, ValueError):
    """Malformed or missing input data. The message names the file (and line where there is one)."""


class ConfigError(LitEfficiencyError, ValueError):
    """An invalid configuration value. The message names the field."""
