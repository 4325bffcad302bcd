"""User-facing errors: one line, exit code 2, no traceback (``benchmark.cli.run_cli`` turns them into that)."""


class UserError(Exception):
    """A problem the user can fix: bad name, bad config value, missing data or model, no network.

    The message must name the problem and the fix in one line.
    """

    exit_code = 2


class ConfigError(UserError):
    """A bad run or method configuration value or key (the one class for both; config.py and methods/base.py
    re-export it)."""
