"""The error types the CLI turns into a one-line message (no traceback), and SIGTERM as an exception."""

from __future__ import annotations

from types import FrameType


class ArenaError(Exception):
    """A problem the user can fix; the message says what to do."""


class DatasetError(ArenaError):
    """A corpus or dataset setting that cannot make a dataset; the message says what to change."""


class Terminated(BaseException):
    """SIGTERM, raised as an exception so that every `finally` runs: the trial's sandbox is ended and the
    run's last status written, as for Ctrl-C."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()
