"""The error type the CLI turns into a one-line message (no traceback)."""


class ArenaError(Exception):
    """A problem the user can fix; the message says what to do."""
