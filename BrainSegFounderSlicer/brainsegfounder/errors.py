"""Errors the user can act on.

A :class:`UserError` carries one line that says what is wrong and how to fix it; the CLI
prints that line (no traceback unless ``--debug``) and exits non-zero.
"""


class UserError(Exception):
    """Bad input or environment; the message is shown to the user as is."""

    exit_code = 2


class Cancelled(Exception):
    """The user asked to stop; raised between sliding-window batches or training steps."""

    exit_code = 130
