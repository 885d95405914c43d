"""The documents of a corpus: the offline standard library, a directory of .txt/.parquet files, or URLs.

Also the two facts about them that a dataset is built on: the corpus hash and each document's side of
the train/validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import string
import sysconfig
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agent.download import BadDownload, StageProgress, download
from agent.errors import DatasetError
from sandbox.hidden_stdlib import PACKAGE_DIRS, in_test_suite

MAX_CACHED_NAME = 120  # bytes of a URL's file name kept in its download's name (a file name holds 255)
TEXT_TYPES = ("string", "large_string", "string_view")  # pyarrow's names of its text types
NOT_TEXT_FRACTION = 0.01  # a .txt download with more undecodable or NUL bytes than this is no text
URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    may_validate: bool = True  # False where a trial's sandbox holds a copy of it (sandbox/hidden_stdlib.py)


def _clean(raw: bytes) -> str:
    # Invalid byte sequences are dropped (not replaced), so every character is real text.
    return raw.decode("utf-8", errors="ignore").replace("\x00", "")


def stdlib_documents() -> list[Document]:
    """Every .py file of the running Python's standard library, in sorted path order. A trial's sandbox
    holds a standard library too, all of it but the test suites: only their files may go to validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        (p for p in root.rglob("*.py") if PACKAGE_DIRS.isdisjoint(p.parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs = []
    for path in paths:
        try:
            text = _clean(path.read_bytes())
        except OSError:
            continue  # a broken symlink or unreadable file in the stdlib is not the user's problem
        if text.strip():
            relative = path.relative_to(root).as_posix()
            docs.append(Document(relative, text, may_validate=in_test_suite(relative)))
    visible = {doc.text for doc in docs if not doc.may_validate}  # a test file whose text is also elsewhere
    return [dataclasses.replace(doc, may_validate=False) if doc.text in visible else doc for doc in docs]


class UnreadableParquet(DatasetError):
    """A parquet file pyarrow cannot read."""


def _parquet_documents(path: Path, name: str, column: str) -> list[Document]:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        names = pq.read_schema(path).names
        table = pq.ParquetFile(path).read(columns=[column]) if column in names else None
    except MemoryError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UnreadableParquet(f"{name}: not a readable parquet file ({e}); remove or replace it") from e
    if table is None:
        raise DatasetError(f"{name}: no '{column}' column in this parquet file (it has {', '.join(names)}); pass "
                           "--text-column NAME")
    kind = table.column(column).type
    if pa.types.is_dictionary(kind):  # a categorical column: its values are what matters
        kind = kind.value_type
    if str(kind) not in TEXT_TYPES:
        raise DatasetError(f"{name}: column '{column}' holds {kind}, not text; pass --text-column NAME")
    texts: list[str | None] = table.column(column).to_pylist()
    return [Document(f"{name}#{i}", _clean(t.encode("utf-8", "ignore")))
            for i, t in enumerate(texts) if t and t.strip()]


def directory_documents(root: Path, column: str = "text") -> list[Document]:
    """Every .txt file (one document each) and .parquet row under `root`, in sorted path order."""
    if not root.is_dir():
        problem = "is a file, not a directory" if root.exists() else "does not exist"
        raise DatasetError(f"corpus directory {root} {problem}; pass an existing directory to --corpus (a file: "
                           "put it in a directory of its own)")
    paths = sorted((p for p in root.rglob("*") if p.suffix in (".txt", ".parquet") and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise DatasetError(f"corpus directory {root} holds no .txt or .parquet files; add some or pick another "
                           "--corpus")
    docs: list[Document] = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            if path.suffix == ".txt":
                text = _clean(path.read_bytes())
                if text.strip():
                    docs.append(Document(rel, text))
            else:
                docs.extend(_parquet_documents(path, rel, column))
        except PermissionError as e:
            raise DatasetError(f"cannot read {path}: permission denied; fix its permissions or remove it") from e
    return docs


def expand_url(url: str, shards: int) -> list[str]:
    """`https://host/shard_{shard:05d}.parquet` with shards=3 gives shards 0, 1, 2; a plain URL is itself."""
    fields = {field for _, field, _, _ in _format_fields(url) if field is not None}
    if fields - {"shard"}:
        raise DatasetError(f"--corpus {url}: {{{sorted(fields - {'shard'})[0]}}} is not a field arena fills; write the "
                           "shard number as {shard} or {shard:05d}, and other braces as {{ and }}")
    if "shard" not in fields:
        if shards > 1:
            raise DatasetError(f"--shards {shards} needs a {{shard}} field in the URL, e.g. "
                               "https://host/shard_{shard:05d}.parquet")
        return [url.format()]  # {{ and }} become braces, as in a URL with shards
    try:
        return [url.format(shard=i) for i in range(shards)]
    except (ValueError, KeyError, IndexError) as e:
        raise DatasetError(f"--corpus {url}: {e}; write the shard number as {{shard}} or {{shard:05d}}, and other "
                           "braces as {{ and }}") from None


def _format_fields(url: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(url))
    except ValueError as e:  # a brace never closed, or one alone
        raise DatasetError(f"--corpus {url}: {e}; write the shard number as {{shard}} or {{shard:05d}}, and other "
                           "braces as {{ and }}") from None


def url_documents(url: str, shards: int, cache_root: Path, column: str, progress: StageProgress) -> list[Document]:
    """The documents of every shard of `url`, each file downloaded once into `cache_root`/downloads."""
    docs: list[Document] = []
    for shard_url in expand_url(url, shards):
        name = Path(urllib.parse.urlparse(shard_url).path).name
        if not name.endswith((".parquet", ".txt")):
            raise DatasetError(f"{shard_url}: only .parquet and .txt URLs are supported; for other files, download "
                               "them into a directory and pass that directory")
        digest = hashlib.sha256(shard_url.encode()).hexdigest()[:12]
        kept = name.encode()[-MAX_CACHED_NAME:].decode("utf-8", errors="ignore")  # a name's limit is in bytes
        dest = cache_root / "downloads" / f"{digest}-{kept}"
        verify = partial(_whole_text, shard_url) if name.endswith(".txt") else _whole_parquet
        path = download(shard_url, dest, f"download {name[-40:]}", progress, verify)
        if name.endswith(".txt"):
            text = _clean(path.read_bytes())
            if text.strip():
                docs.append(Document(name, text))
            continue
        try:
            docs.extend(_parquet_documents(path, name, column))
        except UnreadableParquet as e:  # whole to its footer, broken inside: the next prepare fetches it again
            path.unlink(missing_ok=True)
            raise DatasetError(f"{shard_url}: not a readable parquet file ({str(e.__cause__)[:200]}); the downloaded "
                               "copy was removed: run the command again to fetch it anew, or check the URL") from None
    return docs


def _whole_parquet(path: Path) -> None:
    """A parquet file ends with its footer: a cut one, or an error page in its place, has none."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as e:  # pyarrow raises several types for files that are not parquet
        raise BadDownload(f"not a whole parquet file: {str(e)[:120]}") from e


def _whole_text(url: str, path: Path) -> None:
    """Text, not binary data: almost every byte decodes as UTF-8, and almost none is NUL."""
    raw = path.read_bytes()
    undecodable = len(raw) - len(raw.decode("utf-8", errors="ignore").encode("utf-8"))
    if max(undecodable, raw.count(0)) > NOT_TEXT_FRACTION * len(raw):
        raise DatasetError(f"{url}: not UTF-8 text ({undecodable:,} of {len(raw):,} bytes do not decode, "
                           f"{raw.count(0):,} are NUL); check the URL")


def load_documents(corpus: str, cache_root: Path, shards: int, column: str, progress: StageProgress) -> list[Document]:
    """`corpus` is 'stdlib', a directory, or an http(s) URL (optionally with a {shard} field)."""
    if corpus == "stdlib":
        docs = stdlib_documents()
    elif (scheme := URL_SCHEME.match(corpus)) and scheme.group(1).lower() in ("http", "https"):
        docs = url_documents(corpus, shards, cache_root, column, progress)
    elif scheme:
        raise DatasetError(f"--corpus {corpus}: only http(s) URLs are fetched; for files on this machine pass "
                           "their directory")
    elif not corpus.strip():  # Path('') is the current directory: a shell variable set to nothing, most likely
        raise DatasetError("--corpus is empty; give 'stdlib', a directory of .txt/.parquet files or an http(s) URL")
    else:
        docs = directory_documents(Path(corpus).expanduser(), column)
    if not docs:
        raise DatasetError(f"corpus '{corpus}' is empty (no non-blank documents); point --corpus at real text")
    return docs


def corpus_hash(docs: Iterable[Document]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        data = doc.text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def is_validation(doc: Document, val_fraction: float) -> bool:
    """Stable split: a document's side depends only on its own content."""
    digest = hashlib.sha256(doc.text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def validation_rule(docs: list[Document]) -> str:
    """Which documents may validate, for a dataset's name and fingerprint: empty when all may, else a
    digest of their names (a later change of the rule must not find a dataset built under this one)."""
    if all(doc.may_validate for doc in docs):
        return ""
    names = "\n".join(sorted(doc.name for doc in docs if doc.may_validate))
    return "|may-validate:" + hashlib.sha256(names.encode()).hexdigest()[:16]


def split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, validation). Only documents that may validate are drawn, at the rate that keeps about
    `val_fraction` of all documents for validation (all of them, if they are fewer)."""
    candidates = sum(doc.may_validate for doc in docs)
    rate = min(1.0, val_fraction * len(docs) / candidates) if candidates else 0.0
    train: list[Document] = []
    val: list[Document] = []
    for doc in docs:
        (val if doc.may_validate and is_validation(doc, rate) else train).append(doc)
    return train, val
