"""Fetching a corpus file by URL: whole or not at all, retried with backoff, never half-written under its final name.

A server can fail a download in many ways; each ends one of two ways:
- retried (`_Transient`), then one line naming the last reason: a body shorter than its Content-Length, a cut
  chunked body, a reply that is not HTTP, a dropped or refused connection, HTTP 429 and 5xx (after the server's
  Retry-After where it gives one), a transfer slower than MIN_RATE over `stall_seconds` (a socket timeout restarts
  with every byte, so a server sending one byte a minute would never time out), a file the caller's check
  refuses (`verify`: a parquet file without its footer);
- at once, one line (`DatasetError`): a bad URL, another 4xx, an HTML page (a login or error page) in place of
  the file, a file larger than the free space, a local write error (disk full, a name too long).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.errors import DatasetError
from agent.paths import CACHE_REMEDY, make_dirs
from sandbox.owners import owner_tag, remove_left_behind

StageProgress = Callable[[str, float, float], None]  # (stage, done, total or 0): how a dataset build reports
CHUNK_BYTES = 1 << 16     # read1 returns what has arrived, up to this: progress moves with the bytes
MIN_RATE = 1024           # bytes per second, over each stall window
RETRY_AFTER_CAP = 300.0   # seconds: a server asking for longer is not waited for
BACKOFF_CAP = 30.0


class _Transient(Exception):
    """This attempt failed in a way another may not; the message says how."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait  # seconds the server asked for (Retry-After), else the backoff's


class BadDownload(Exception):
    """Raised by a `verify` check: the file is not what its name says (cut, or another kind of file)."""


def download(url: str, dest: Path, stage: str, progress: StageProgress,
             verify: Callable[[Path], None] = lambda path: None, retries: int = 5, timeout: float = 60.0,
             stall_seconds: float = 60.0) -> Path:
    """Fetch `url` to `dest` once; a copy already there is checked with `verify` first and fetched again when
    it fails (an older arena kept cut files). `verify` raises BadDownload for a file worth another try, or
    DatasetError for one no retry would mend."""
    if dest.exists():
        try:
            verify(dest)
            return dest
        except (BadDownload, DatasetError):  # the server may have mended it since: it gets another chance
            dest.unlink(missing_ok=True)
    make_dirs(dest.parent, f"the downloads directory {dest.parent}", CACHE_REMEDY, DatasetError)
    remove_left_behind(dest.parent, f"{dest.name}.tmp-")  # of arenas killed in mid-download
    tmp = dest.with_name(f"{dest.name}.tmp-{owner_tag()}")
    reason = ""
    for attempt in range(retries):
        try:
            _fetch(url, tmp, lambda done, total: progress(stage, done, total), timeout, stall_seconds)
            verify(tmp)
            tmp.replace(dest)
            return dest
        except (_Transient, BadDownload) as e:
            reason = " ".join(str(e).split())[:200]  # one line, whatever the server sent
            wait = e.wait if isinstance(e, _Transient) and e.wait is not None else min(2.0 ** attempt, BACKOFF_CAP)
        finally:
            _remove(tmp)
        if attempt + 1 < retries:
            progress(f"{stage}: try {attempt + 2} of {retries} in {wait:.0f} s ({reason[:60]})", 0, 0)
            time.sleep(wait)
    raise DatasetError(f"download of {url} failed after {retries} tries ({reason}); check the network or the URL")


def _fetch(url: str, tmp: Path, progress: Callable[[int, int], None], timeout: float, stall_seconds: float) -> None:
    """One attempt: the whole body into `tmp`, flushed to disk."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response.headers.get("Content-Length"))
            if response.headers.get_content_type() == "text/html":
                raise DatasetError(f"{url} answered with an HTML page, not the file (a login or error page?); "
                                   "check the URL")
            free = shutil.disk_usage(tmp.parent).free
            if total > free:
                raise DatasetError(f"{url} is {total / 1e9:.1f} GB and {tmp.parent} has {free / 1e9:.1f} GB free; "
                                   f"free some space, or {CACHE_REMEDY}")
            done = _copy(response, tmp, total, progress, stall_seconds)
    except urllib.error.HTTPError as e:
        if e.code < 500 and e.code != 429:
            raise DatasetError(f"download of {url} failed: HTTP {e.code}; check the URL") from None
        raise _Transient(f"HTTP {e.code}", _retry_after(e.headers.get("Retry-After") if e.headers else None)) from None
    except (http.client.InvalidURL, ValueError) as e:  # a space, a port that is no number, an unknown scheme
        raise DatasetError(f"{url} is not a URL arena can fetch ({e}); write spaces as %20 and check the host "
                           "and port") from None
    except urllib.error.URLError as e:
        raise _Transient(str(e.reason)) from None
    except (http.client.HTTPException, OSError) as e:  # a cut chunk, a reply that is not HTTP, a reset, a timeout
        raise _Transient(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    if total and done != total:
        raise _Transient(f"the server sent {done:,} of the {total:,} bytes it announced")


def _copy(response: http.client.HTTPResponse, tmp: Path, total: int, progress: Callable[[int, int], None],
          stall_seconds: float) -> int:
    """The body into `tmp`; bytes written. A write that fails is this machine's fault: one line, no retry."""
    try:
        out = open(tmp, "wb")  # noqa: SIM115 - closed by the `with` below; only opening it is guarded here
    except OSError as e:
        raise DatasetError(f"cannot write {tmp} ({e.strerror}); {CACHE_REMEDY}") from None
    with out:
        done, window_start, window_done = 0, time.monotonic(), 0
        while chunk := response.read1(CHUNK_BYTES):
            try:
                out.write(chunk)
            except OSError as e:
                raise DatasetError(f"cannot write {tmp} ({e.strerror}); free some space, or {CACHE_REMEDY}") from None
            done += len(chunk)
            progress(done, total)
            if time.monotonic() - window_start >= stall_seconds:
                if done - window_done < MIN_RATE * stall_seconds:
                    raise _Transient(f"stalled: {done - window_done:,} bytes in {stall_seconds:.0f} s")
                window_start, window_done = time.monotonic(), done
        try:
            out.flush()
            os.fsync(out.fileno())  # a power cut after the rename leaves the whole file, not an empty one
        except OSError as e:
            raise DatasetError(f"cannot write {tmp} ({e.strerror}); free some space, or {CACHE_REMEDY}") from None
    return done


def _content_length(value: str | None) -> int:
    """The announced size, or 0 when the server gives none (or none that is a number)."""
    value = (value or "").strip()
    return int(value) if value.isdigit() else 0


def _retry_after(value: str | None) -> float | None:
    """Seconds a 429 or 503 asks to wait (the delay form; a date is left to the backoff), capped."""
    value = (value or "").strip()
    return min(float(value), RETRY_AFTER_CAP) if value.isdigit() else None


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # a name the file system refused never became a file
        path.unlink(missing_ok=True)
