"""Errors that the CLI turns into one-line messages and exit codes (0 ok, 2 bad input, 1 other)."""


class RetuneError(Exception):
    """Something went wrong that is not the user's input: exit 1."""

    exit_code = 1


class UsageError(RetuneError):
    """Bad input (config, data, paths, model names): exit 2. The message names the problem and the fix."""

    exit_code = 2
