"""User-facing errors: one line that says what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user (a path, a config value, a checkpoint).

    The CLIs print `error: <message>` and exit with status 2 instead of a traceback.
    """
