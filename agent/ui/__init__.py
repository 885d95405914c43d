"""Views of runs for people: replay and compare of recorded runs, and the live view of a running one."""

from __future__ import annotations

import argparse
from typing import TypeVar

# The CLI's parser class (an ArgumentParser subclass): each view adds its subcommand as one of those.
ParserT = TypeVar("ParserT", bound=argparse.ArgumentParser)
