"""User-facing errors: one line, exit code 2, no traceback (``benchmark.cli.run_cli`` turns them into that)."""


class UserError(Exception):
    """A problem the user can fix: bad name, bad config value, missing data or model, no network.

    The message must name the problem and the fix in one line.
    """

    exit_code = 2


class ConfigError(UserError):
    """A bad run or method configuration value or key (the one class for both; config.py and methods/base.py
    re-export it)."""


class TrainingFailed(Exception):
    """A run that cannot go on (its loss became NaN or infinite): recorded as failed with the reason and the
    step, reported in one line, exit code 1. Not the user's input, so not a UserError."""

    exit_code = 1
