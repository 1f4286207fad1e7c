"""The one exception family users see. A leaf module: every layer may import it."""


class RecstackError(Exception):
    """A mistake the user can fix; the message names the culprit and the fix.

    The CLI prints these without a traceback (unless --debug) and exits non-zero.
    """
