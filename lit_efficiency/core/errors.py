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


def find_user_error(exc: BaseException) -> LitEfficiencyError | None:
    """The first :class:`LitEfficiencyError` in ``exc`` or its chain of causes and contexts (``None`` if none).

    jsonargparse wraps an error raised in a model or data ``__init__`` while it instantiates the classes (``Does not
    validate against any of the Union subtypes ...``); the user's one-line message is the original error, kept in
    the chain.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        if isinstance(current, LitEfficiencyError):
            return current
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
    return None


#: Lines of jsonargparse's multi-line messages that carry no information for the user.
_PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:")


def condense_parser_error(message: str, limit: int = 400) -> str:
    """jsonargparse's multi-line parse error as one line: the key, then the informative details."""
    parts = []
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ")
        if line and not line.startswith(_PARSER_NOISE) and "<class 'NoneType'>" not in line:
            parts.append(line)
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OneLineErrors:
    """Mixin for a jsonargparse ``ArgumentParser``: a parse error is one ``lit-efficiency: error: ...`` line, exit 2.

    Only when the parser would exit anyway (``exit_on_error``); nested parsers that raise keep raising.
    """

    def error(self, message: str, ex: Exception | None = None):  # noqa: D102 (documented on the class)
        import os
        import sys

        if not getattr(self, "exit_on_error", True) or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)  # type: ignore[misc]
        print(f"lit-efficiency: error: {condense_parser_error(message)}", file=sys.stderr)
        sys.exit(2)
