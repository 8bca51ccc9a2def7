"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class BenchError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class ConfigError(BenchError, ValueError):
    """A recipe, `--set` or CLI value that is malformed, unknown or out of range."""
