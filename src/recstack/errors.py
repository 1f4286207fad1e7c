"""The one exception family users see. A leaf module: every layer may import it."""


class RecstackError(Exception):
    """A mistake the user can fix; the message names the culprit and the fix.

    The CLI prints these without a traceback (unless --debug) and exits non-zero.
    """


class RecstackWarning(UserWarning):
    """Something the user should know that changed their data or results; the CLI prints it as one line."""
