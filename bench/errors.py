"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class BenchError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class ConfigError(BenchError, ValueError):
    """A recipe, `--set` or CLI value that is malformed, unknown or out of range."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, at most `limit` characters ("" when it has none)."""
    lines = str(err).splitlines()
    return lines[0][:limit] if lines else ""
