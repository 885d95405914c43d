"""The read-only data harness: corpus, tokenizer, batches and the metric.

Trials never edit this file; the sandbox takes it from the template and checks its hash.
It needs only numpy at import time; `tokenizers`, `pyarrow` and `torch` are imported
where they are used, so a trial container needs nothing but torch and numpy.

A prepared dataset is a directory:
    tokenizer.json     byte-level BPE (HF tokenizers)
    token_bytes.npy    exact UTF-8 byte length of every token id (0 for special tokens)
    train.bin          uint16 token stream of the training documents, each preceded by BOS
    val.bin            uint16 token stream of the validation documents, same layout
    meta.json          sizes, the corpus description and the dataset fingerprint
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

FORMAT_VERSION = 1
BOS = "<|bos|>"
DEFAULT_VOCAB_SIZE = 8192
MIN_VOCAB_SIZE = 512  # 256 byte tokens plus room for merges; below this BPE learns almost nothing
DEFAULT_VAL_FRACTION = 0.1
TOKENIZER_TRAIN_CHARS = 1_000_000_000  # cap on text fed to BPE training (autoresearch uses 1e9 too)
# GPT-4 style pre-split, digits grouped by at most two (autoresearch's choice for small vocabularies).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

Progress = Callable[[str, float, float], None]  # (task, done, total)


class DataError(Exception):
    """A problem with the corpus or dataset that the user must fix; the message says how."""


def _no_progress(task: str, done: float, total: float) -> None:
    pass


# ---------------------------------------------------------------------------- corpus sources

@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _clean(raw: bytes) -> str:
    # Invalid byte sequences are dropped (not replaced), so every character is real text.
    return raw.decode("utf-8", errors="ignore").replace("\x00", "")


def stdlib_documents() -> list[Document]:
    """Every .py file of the running Python's standard library, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        (p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs = []
    for path in paths:
        try:
            text = _clean(path.read_bytes())
        except OSError:
            continue  # a broken symlink or unreadable file in the stdlib is not the user's problem
        if text.strip():
            docs.append(Document(path.relative_to(root).as_posix(), text))
    return docs


def _parquet_documents(path: Path, name: str, column: str) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read(columns=[column]) if column in pq.read_schema(path).names else None
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{name}: not a readable parquet file ({e}); remove or replace it") from e
    if table is None:
        raise DataError(f"{name}: no '{column}' column in this parquet file; pass --text-column NAME")
    texts = table.column(column).to_pylist()
    return [Document(f"{name}#{i}", _clean(t.encode("utf-8", "ignore"))) for i, t in enumerate(texts) if t and t.strip()]


def directory_documents(root: Path, column: str = "text") -> list[Document]:
    """Every .txt file (one document each) and .parquet row under `root`, in sorted path order."""
    if not root.is_dir():
        raise DataError(f"corpus directory {root} does not exist; pass an existing directory to --corpus")
    paths = sorted((p for p in root.rglob("*") if p.suffix in (".txt", ".parquet") and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise DataError(f"corpus directory {root} holds no .txt or .parquet files; add some or pick another --corpus")
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
            raise DataError(f"cannot read {path}: permission denied; fix its permissions or remove it") from e
    return docs


def expand_url(url: str, shards: int) -> list[str]:
    """`https://host/shard_{shard:05d}.parquet` with shards=3 gives shards 0, 1, 2; a plain URL is itself."""
    if "{shard" not in url:
        return [url]
    return [url.format(shard=i) for i in range(shards)]


def download(url: str, dest: Path, progress: Progress = _no_progress, retries: int = 5, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` once; partial downloads never appear under the final name."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = float(resp.headers.get("Content-Length") or 0)
                done = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    progress(f"download {dest.name}", done, total)
            tmp.replace(dest)
            return dest
        except urllib.error.HTTPError as e:
            tmp.unlink(missing_ok=True)
            if e.code < 500 and e.code != 429:
                raise DataError(f"download of {url} failed: HTTP {e.code}; check the URL") from e
            error: Exception = e
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            error = e
        if attempt + 1 < retries:
            time.sleep(min(2 ** attempt, 30))
    raise DataError(f"download of {url} failed after {retries} tries ({error}); check the network or the URL")


def url_documents(url: str, shards: int, cache_root: Path, column: str, progress: Progress) -> list[Document]:
    docs: list[Document] = []
    for shard_url in expand_url(url, shards):
        name = Path(urllib.parse.urlparse(shard_url).path).name
        if not name.endswith((".parquet", ".txt")):
            raise DataError(f"{shard_url}: only .parquet and .txt URLs are supported")
        key = hashlib.sha256(shard_url.encode()).hexdigest()[:12]
        path = download(shard_url, cache_root / "downloads" / f"{key}-{name}", progress)
        if name.endswith(".txt"):
            text = _clean(path.read_bytes())
            if text.strip():
                docs.append(Document(name, text))
        else:
            docs.extend(_parquet_documents(path, name, column))
    return docs


def load_documents(corpus: str, cache_root: Path, shards: int = 1, column: str = "text",
                   progress: Progress = _no_progress) -> list[Document]:
    """`corpus` is 'stdlib', a directory, or an http(s) URL (optionally with a {shard} field)."""
    if corpus == "stdlib":
        docs = stdlib_documents()
    elif corpus.startswith(("http://", "https://")):
        docs = url_documents(corpus, shards, cache_root, column, progress)
    else:
        docs = directory_documents(Path(corpus).expanduser(), column)
    if not docs:
        raise DataError(f"corpus '{corpus}' is empty (no non-blank documents); point --corpus at real text")
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


# ---------------------------------------------------------------------------- tokenizer

def byte_level_decoder_table() -> dict[str, int]:
    """Map each character of the byte-level BPE alphabet back to the byte it stands for.

    Byte-level BPE shows bytes as printable characters: the printable Latin-1 bytes stand for
    themselves, every other byte gets the next code point from 256 upwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def train_tokenizer(docs: list[Document], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def texts() -> Iterator[str]:
        budget = TOKENIZER_TRAIN_CHARS
        for doc in docs:
            if budget <= 0:
                return
            yield doc.text[:budget]
            budget -= len(doc.text)

    tok.train_from_iterator(texts(), trainer, length=len(docs))
    return tok


def token_byte_lengths(tok) -> np.ndarray:
    """Exact UTF-8 length of each token, read from its byte-level form (0 for special tokens)."""
    table = byte_level_decoder_table()
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece in special else len(piece)  # one alphabet character per byte
        if piece not in special and any(ch not in table for ch in piece):
            raise DataError(f"token {piece!r} is not byte-level; delete the dataset cache and prepare again")
    return lengths


# ---------------------------------------------------------------------------- preparing a dataset

def dataset_key(corpus_digest: str, vocab_size: int, val_fraction: float) -> str:
    spec = f"v{FORMAT_VERSION}|{corpus_digest}|{vocab_size}|{val_fraction!r}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _encode_to_file(tok, docs: list[Document], path: Path, bos_id: int, progress: Progress, task: str) -> int:
    n_tokens = 0
    batch = 256
    with open(path, "wb") as out:
        for start in range(0, len(docs), batch):
            chunk = docs[start:start + batch]
            for enc in tok.encode_batch([d.text for d in chunk], add_special_tokens=False):
                ids = np.empty(len(enc.ids) + 1, dtype=np.uint16)
                ids[0] = bos_id
                ids[1:] = enc.ids
                out.write(ids.tobytes())
                n_tokens += len(ids)
            progress(task, min(start + batch, len(docs)), len(docs))
    return n_tokens


def prepare(corpus: str = "stdlib", cache_root: Path | str | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
            val_fraction: float = DEFAULT_VAL_FRACTION, shards: int = 1, column: str = "text",
            progress: Progress = _no_progress) -> Path:
    """Build (or find in the cache) the tokenized dataset for `corpus` and return its directory."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab size {vocab_size} is too small; use at least {MIN_VOCAB_SIZE} (default {DEFAULT_VOCAB_SIZE})")
    if vocab_size > 65536:
        raise DataError(f"vocab size {vocab_size} does not fit uint16 token files; use at most 65536")
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val fraction {val_fraction} must be between 0 and 0.5 (default {DEFAULT_VAL_FRACTION})")
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    progress("read corpus", 0, 1)
    docs = load_documents(corpus, cache_root, shards, column, progress)
    digest = corpus_hash(docs)
    progress("read corpus", 1, 1)
    out = cache_root / dataset_key(digest, vocab_size, val_fraction)
    if (out / "meta.json").exists():
        return out

    val_docs = [d for d in docs if is_validation(d, val_fraction)]
    train_docs = [d for d in docs if not is_validation(d, val_fraction)]
    if not val_docs or not train_docs:
        raise DataError(f"corpus '{corpus}' has {len(docs)} documents, too few to split into train and validation; "
                        "add more documents")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress("train tokenizer", 0, 1)
    tok = train_tokenizer(train_docs, vocab_size)
    progress("train tokenizer", 1, 1)
    if tok.get_vocab_size() < vocab_size:
        raise DataError(f"corpus '{corpus}' is too small to learn {vocab_size} tokens (got {tok.get_vocab_size()}); "
                        "use a larger corpus or a smaller --vocab-size")
    tok.save(str(tmp / "tokenizer.json"))
    lengths = token_byte_lengths(tok)
    np.save(tmp / "token_bytes.npy", lengths)
    bos_id = tok.token_to_id(BOS)
    n_train = _encode_to_file(tok, train_docs, tmp / "train.bin", bos_id, progress, "tokenize train")
    n_val = _encode_to_file(tok, val_docs, tmp / "val.bin", bos_id, progress, "tokenize validation")
    tokenizer_digest = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
    meta = {
        "format": FORMAT_VERSION,
        "corpus": corpus,
        "corpus_sha256": digest,
        "tokenizer_sha256": tokenizer_digest,
        "fingerprint": hashlib.sha256(f"{digest}|{tokenizer_digest}|{val_fraction!r}".encode()).hexdigest()[:16],
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "val_fraction": val_fraction,
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": n_train, "val": n_val},
        "bytes": {"train": sum(len(d.text.encode()) for d in train_docs),
                  "val": sum(len(d.text.encode()) for d in val_docs)},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same dataset first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_cache_root() -> Path:
    return Path(os.environ.get("ARENA_CACHE", Path.home() / ".cache" / "autoresearch-arena"))


def read_meta(data_dir: Path | str) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run `arena prepare` first")
    return json.loads(path.read_text())


def read_tokens(data_dir: Path | str, split: str) -> np.ndarray:
    path = Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise DataError(f"{path} is missing; run `arena prepare` again")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ---------------------------------------------------------------------------- training batches

class TrainBatches:
    """Endless (inputs, targets) batches of `seq_len` tokens from train.bin.

    The stream is cut into non-overlapping windows; each epoch visits every window once in an
    order drawn from `seed`, so a run with the same seed sees the same data in the same order.
    """

    def __init__(self, data_dir: Path | str, seq_len: int, seed: int):
        self.tokens = read_tokens(data_dir, "train")
        self.seq_len = seq_len
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(f"training split has {len(self.tokens)} tokens, fewer than one sequence of {seq_len}")
        self.seed = seed
        self.epoch = 0
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    def next_starts(self, batch_size: int) -> np.ndarray:
        starts = []
        while len(starts) < batch_size:
            if self._pos >= len(self._order):
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.n_windows) * self.seq_len
                self.epoch += 1
                self._pos = 0
            take = min(batch_size - len(starts), len(self._order) - self._pos)
            starts.extend(self._order[self._pos:self._pos + take])
            self._pos += take
        return np.asarray(starts)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """A (batch_size, seq_len + 1) int64 array; inputs are [:, :-1], targets [:, 1:]."""
        starts = self.next_starts(batch_size)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].astype(np.int64)


# ---------------------------------------------------------------------------- the metric

def validation_rows(data_dir: Path | str, seq_len: int, eval_tokens: int) -> np.ndarray:
    """The fixed validation set: the first `eval_tokens` targets of val.bin, as rows of seq_len + 1."""
    if eval_tokens % seq_len:
        raise DataError(f"eval tokens {eval_tokens} must be a multiple of the sequence length {seq_len}")
    tokens = read_tokens(data_dir, "val")
    if len(tokens) < eval_tokens + 1:
        raise DataError(f"validation split has {len(tokens):,} tokens but {eval_tokens:,} are evaluated; "
                        "prepare a larger corpus or lower --eval-tokens")
    rows = eval_tokens // seq_len
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)


@dataclass
class BpbTally:
    """Running sums for bits per byte: nats of every counted target and the bytes those targets stand for."""
    nats: float = 0.0
    bytes: int = 0
    tokens: int = 0

    @property
    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.bytes)


def score_logits(logits, targets, token_bytes, tally: BpbTally) -> None:
    """Add one batch: cross-entropy computed here in float64 (never by the model); special-token targets skipped."""
    import torch

    nbytes = token_bytes[targets]
    counted = nbytes > 0
    logp = torch.log_softmax(logits.double(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    tally.nats += float(nll[counted].sum())
    tally.bytes += int(nbytes.sum())
    tally.tokens += int(counted.sum())


def evaluate_bpb(forward, data_dir: Path | str, seq_len: int, eval_tokens: int, device: str = "cpu",
                 batch_rows: int = 8, progress: Progress = _no_progress, check=None) -> BpbTally:
    """val_bpb of `forward` (token ids (B, T) -> logits (B, T, V)) on the fixed validation set.

    `check(inputs, logits)`, when given, sees every batch before it is scored and raises to refuse it.
    """
    import torch

    rows = validation_rows(data_dir, seq_len, eval_tokens)
    token_bytes = torch.from_numpy(np.load(Path(data_dir) / "token_bytes.npy").astype(np.int64)).to(device)
    tally = BpbTally()
    with torch.no_grad():
        for start in range(0, len(rows), batch_rows):
            batch = torch.from_numpy(rows[start:start + batch_rows]).to(device)
            logits = forward(batch[:, :-1])
            if tuple(logits.shape[:2]) != tuple(batch[:, 1:].shape) or logits.shape[-1] != len(token_bytes):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected "
                                 f"({len(batch)}, {seq_len}, {len(token_bytes)})")
            if check is not None:
                check(batch[:, :-1], logits)
            score_logits(logits, batch[:, 1:], token_bytes, tally)
            progress("evaluate", min(start + batch_rows, len(rows)), len(rows))
    return tally


if __name__ == "__main__":
    print("prepare.py is a library; run `arena prepare` to build a dataset.", file=sys.stderr)
    sys.exit(2)
