"""Fetching a corpus file by URL: retried with backoff, never half-written under its final name."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.errors import DatasetError
from agent.paths import CACHE_REMEDY, make_dirs
from sandbox.owners import owner_tag, remove_left_behind

BytesProgress = Callable[[int, int], None]  # (bytes done, bytes in all or 0 when the server does not say)


def download(url: str, dest: Path, progress: BytesProgress, retries: int = 5, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` once; partial downloads never appear under the final name."""
    if dest.exists():
        return dest
    make_dirs(dest.parent, f"the downloads directory {dest.parent}", CACHE_REMEDY, DatasetError)
    remove_left_behind(dest.parent, f"{dest.name}.tmp-")  # of arenas killed in mid-download
    tmp = dest.with_name(f"{dest.name}.tmp-{owner_tag()}")
    error: Exception | None = None
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    progress(done, total)
            tmp.replace(dest)
            return dest
        except urllib.error.HTTPError as e:
            tmp.unlink(missing_ok=True)
            if e.code < 500 and e.code != 429:
                raise DatasetError(f"download of {url} failed: HTTP {e.code}; check the URL") from e
            error = e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            error = e
        if attempt + 1 < retries:
            time.sleep(min(2 ** attempt, 30))
    raise DatasetError(f"download of {url} failed after {retries} tries ({error}); check the network or the URL")
