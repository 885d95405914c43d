"""Downloading a corpus from a server that misbehaves (a real loopback HTTP server that cuts, stalls, lies about
sizes, rate-limits, answers with an HTML page or not in HTTP at all): each ends whole, retried, or as one line,
and nothing cut ever lands under its final name or stays in the cache."""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.corpus import _whole_parquet, expand_url, load_documents
from agent.download import download
from agent.errors import DatasetError

TEXT = ("def add(a, b):\n    return a + b\n\n" * 400).encode()


def parquet_bytes(column: str = "text", values: list | pa.Array | None = None) -> bytes:
    buffer = io.BytesIO()
    rows = values if values is not None else [f"document {i}\n" * 50 for i in range(30)]
    pq.write_table(pa.table({column: rows}), buffer)
    return buffer.getvalue()


class FaultyServer(http.server.BaseHTTPRequestHandler):
    """GET /MODE/NAME serves FILES[NAME] the way MODE says; `asked` counts the requests per path."""
    files: ClassVar[dict[str, bytes]] = {}
    asked: ClassVar[Counter[str]] = Counter()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).asked[self.path] += 1
        times = type(self).asked[self.path]
        mode, _, name = self.path.lstrip("/").partition("/")
        body = self.files.get(name.partition("?")[0], b"")
        if mode == "cut" or (mode == "cut-once" and times == 1):  # announces all, sends half, closes
            self.head(200, len(body))
            self.wfile.write(body[: len(body) // 2])
        elif mode == "chunk-cut":  # one chunk, then the connection closes without the last chunk
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body) // 2, body[: len(body) // 2]))
        elif mode == "trickle":  # a byte every 0.2 s: each read succeeds, the transfer never ends
            self.head(200, len(body))
            for byte in body[:50]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        elif mode == "html":
            page = b"<html><body>Sign in to continue</body></html>"
            self.head(200, len(page), "text/html; charset=utf-8")
            self.wfile.write(page)
        elif mode == "huge":
            self.head(200, 10**15)
            self.wfile.write(body[:100])
        elif mode == "busy" and times == 1:
            self.send_response(429)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "nothttp":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        elif mode == "missing":
            self.send_error(404)
        else:
            self.head(200, len(body))
            self.wfile.write(body)

    def head(self, status: int, length: int, kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture
def server():
    FaultyServer.files = {"shard.parquet": parquet_bytes(), "notes.txt": TEXT, "noise.txt": os.urandom(20_000),
                          "numbers.parquet": parquet_bytes("text", list(range(30)))}
    FaultyServer.asked = Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(url: str, dest: Path, retries: int = 2, **kwargs) -> Path:
    return download(url, dest, "download", lambda stage, done, total: None, _parquet_footer, retries=retries,
                    timeout=5, **kwargs)


def _parquet_footer(path: Path) -> None:
    """The corpus's own check of a parquet download, for the file and its partial download beside it."""
    if ".parquet" in path.name:
        _whole_parquet(path)


def only_the_file(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.parent.iterdir())


def test_a_body_cut_short_of_its_length_is_fetched_again(server, tmp_path):
    dest = fetch(f"{server}/cut-once/notes.txt", tmp_path / "notes.txt")
    assert dest.read_bytes() == TEXT and only_the_file(dest) == ["notes.txt"]


@pytest.mark.parametrize("mode, reason", [
    ("cut", f"sent {len(TEXT) // 2:,} of the {len(TEXT):,} bytes it announced"),
    ("chunk-cut", "IncompleteRead"),
    ("nothttp", "BadStatusLine"),
])
def test_a_body_never_whole_is_one_line_and_leaves_nothing(server, tmp_path, mode, reason):
    with pytest.raises(DatasetError, match="failed after 2 tries") as caught:
        fetch(f"{server}/{mode}/notes.txt", tmp_path / "notes.txt")
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    assert FaultyServer.asked[f"/{mode}/notes.txt"] == 2


def test_a_trickle_is_dropped_as_stalled(server, tmp_path):
    with pytest.raises(DatasetError, match=r"stalled: \d+ bytes in 1 s"):
        fetch(f"{server}/trickle/notes.txt", tmp_path / "notes.txt", retries=1, stall_seconds=1)
    assert list(tmp_path.iterdir()) == []


def test_a_cut_parquet_without_a_length_is_caught_by_its_footer(server, tmp_path):
    FaultyServer.files["half.parquet"] = FaultyServer.files["shard.parquet"][:3000]
    with pytest.raises(DatasetError, match="not a whole parquet file"):
        fetch(f"{server}/whole/half.parquet", tmp_path / "half.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode, message", [
    ("html", "answered with an HTML page"),
    ("huge", "is 1000000.0 GB and"),
    ("missing", "HTTP 404; check the URL"),
])
def test_what_no_retry_mends_is_one_line_at_once(server, tmp_path, mode, message):
    with pytest.raises(DatasetError, match=message):
        fetch(f"{server}/{mode}/shard.parquet", tmp_path / "shard.parquet", retries=5)
    assert FaultyServer.asked[f"/{mode}/shard.parquet"] == 1
    assert list(tmp_path.iterdir()) == []


def test_a_rate_limit_waits_as_long_as_the_server_asks(server, tmp_path):
    start = time.monotonic()
    dest = fetch(f"{server}/busy/notes.txt", tmp_path / "notes.txt")
    assert time.monotonic() - start >= 2 and dest.read_bytes() == TEXT  # Retry-After: 2, not the 1 s backoff


@pytest.mark.parametrize("url", ["http://127.0.0.1:port/notes.txt", "http://127.0.0.1/a file.txt"])
def test_a_url_that_is_no_url_is_one_line(tmp_path, url):
    with pytest.raises(DatasetError, match="not a URL arena can fetch"):
        fetch(url, tmp_path / "notes.txt")


def test_a_cut_copy_an_older_arena_kept_is_fetched_again(server, tmp_path):
    dest = tmp_path / "shard.parquet"
    dest.write_bytes(FaultyServer.files["shard.parquet"][:2000])
    assert fetch(f"{server}/whole/shard.parquet", dest).read_bytes() == FaultyServer.files["shard.parquet"]


def test_a_corpus_by_url_checks_what_it_downloads(server, tmp_path):
    def documents(url: str, shards: int = 1) -> list:
        return load_documents(url, tmp_path / "cache", shards, "text", lambda *args: None)

    assert len(documents(f"{server}/cut-once/shard.parquet")) == 30  # cut once, fetched again, whole
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        documents(f"{server}/whole/noise.txt")
    with pytest.raises(DatasetError, match="column 'text' holds int64, not text; pass --text-column"):
        documents(f"{server}/whole/numbers.parquet")
    with pytest.raises(DatasetError, match="only http"):
        documents("ftp://127.0.0.1/shard.parquet")
    assert len(documents(f"HTTP{server[4:]}/whole/shard.parquet")) == 30  # a scheme is read in any case
    long = "x" * 300 + ".txt"
    FaultyServer.files[long] = TEXT
    assert len(documents(f"{server}/whole/{long}")) == 1  # the cached copy's name is cut to fit
    with pytest.raises(DatasetError, match="not a URL arena can fetch"):  # cut to fit in bytes, not characters
        documents(f"{server}/whole/{'文' * 100}.txt")
    categories = pa.array([f"document {i % 3}\n" * 50 for i in range(30)]).dictionary_encode()
    FaultyServer.files["categories.parquet"] = parquet_bytes("text", categories)
    assert len(documents(f"{server}/whole/categories.parquet")) == 30  # a categorical column of text is text


@pytest.mark.parametrize("url, shards, message", [
    ("https://h/shard_{shard:q}.parquet", 3, "Unknown format code"),
    ("https://h/shard_{shard:05d}.parquet?sig={token}", 3, r"\{token\} is not a field arena fills; write the shard"),
    ("https://h/one.txt?sig={token}", 1, r"\{token\} is not a field arena fills"),  # was fetched as it was
    ("https://h/shard_{shard.parquet", 3, "expected '}'"),
    ("https://h/shard_00000.parquet", 3, r"--shards 3 needs a \{shard\} field"),
])
def test_a_bad_url_pattern_is_one_line(url, shards, message):
    with pytest.raises(DatasetError, match=message):
        expand_url(url, shards)


def test_url_patterns_expand():
    assert expand_url("https://h/s_{shard:02d}.parquet?x={{y}}", 2) == ["https://h/s_00.parquet?x={y}",
                                                                       "https://h/s_01.parquet?x={y}"]
    assert expand_url("https://h/one.parquet", 1) == ["https://h/one.parquet"]
    assert expand_url("https://h/one.parquet?x={{y}}", 1) == ["https://h/one.parquet?x={y}"]
