"""Building a tokenized dataset from a corpus, once: cached under a key of its content and settings.

A dataset is a directory (read at trial time by train_template/prepare.py):
    tokenizer.json     byte-level BPE (HF tokenizers)
    token_bytes.npy    exact UTF-8 byte length of every token id (0 for special tokens)
    train.bin          uint16 token stream of the training documents, each preceded by BOS
    val.bin            uint16 token stream of the validation documents, same layout
    meta.json          sizes, the corpus description and the dataset fingerprint

Its name (`dataset_key`) and its fingerprint are derived exactly as before the builder moved here from
prepare.py, so datasets cached by earlier versions are found and keep their fingerprints; except for the
standard library, whose validation documents now come from its test suites only (corpus.split), which
gives it a new name and fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.corpus import Document, corpus_hash, load_documents, split, validation_rule
from agent.download import StageProgress
from agent.errors import DatasetError
from agent.paths import CACHE_REMEDY, make_dirs, require_writable_dir
from agent.tokenizer import BOS, token_byte_lengths, train_tokenizer
from sandbox.owners import owner_tag, remove_left_behind

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT_VERSION = 1
DEFAULT_VOCAB_SIZE = 8192
MIN_VOCAB_SIZE = 512  # 256 byte tokens plus room for merges; below this BPE learns almost nothing
MAX_VOCAB_SIZE = 65536  # token ids are stored as uint16
DEFAULT_VAL_FRACTION = 0.1


def no_progress(task: str, done: float, total: float) -> None:
    pass


def default_cache_root() -> Path:
    # an empty ARENA_CACHE (a shell variable set to nothing) is no choice, not the current directory
    return Path(os.environ.get("ARENA_CACHE") or Path.home() / ".cache" / "autoresearch-arena")


def dataset_key(corpus_digest: str, vocab_size: int, val_fraction: float, rule: str) -> str:
    """`rule`: corpus.validation_rule, empty for a corpus whose every document may validate."""
    spec = f"v{FORMAT_VERSION}|{corpus_digest}|{vocab_size}|{val_fraction!r}{rule}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _encode_to_file(tok: Tokenizer, docs: list[Document], path: Path, bos_id: int, progress: StageProgress,
                    task: str) -> int:
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


def check_cached(out: Path, digest: str, vocab_size: int) -> None:
    """A cached dataset whole as its build left it (builds are renamed into place complete, so anything else was
    done to it since): its meta.json, the tokenizer it names, the bytes of each token, and token files of the
    sizes it gives."""
    problem = None
    try:
        meta = json.loads((out / "meta.json").read_text())
        tokens = meta["tokens"]
        if meta["corpus_sha256"] != digest or meta["vocab_size"] != vocab_size:
            problem = "its meta.json names another corpus or vocabulary"
        elif hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest() != meta["tokenizer_sha256"]:
            problem = "its tokenizer.json is not the one it was built with"
        elif np.load(out / "token_bytes.npy").shape != (vocab_size,):  # the eval phase's bytes per token
            problem = "its token_bytes.npy does not hold one length per token"
        for split_name in ("train", "val"):
            size = (out / f"{split_name}.bin").stat().st_size
            if problem is None and size != 2 * tokens[split_name]:
                problem = f"{split_name}.bin holds {size // 2:,} tokens, not the {tokens[split_name]:,} of its build"
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:  # missing or cut files, JSON not meta.json's
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise DatasetError(f"the cached dataset {out} is damaged ({problem}); delete that directory and run again "
                           "to rebuild it")


def build_dataset(corpus: str = "stdlib", cache_root: Path | str | None = None,
                  vocab_size: int = DEFAULT_VOCAB_SIZE, val_fraction: float = DEFAULT_VAL_FRACTION, shards: int = 1,
                  column: str = "text", progress: StageProgress = no_progress) -> Path:
    """Build (or find in the cache) the tokenized dataset for `corpus` and return its directory."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DatasetError(f"vocab size {vocab_size} is too small; use at least {MIN_VOCAB_SIZE} (the cpu preset "
                           f"uses 2048, the gpu preset {DEFAULT_VOCAB_SIZE})")
    if vocab_size > MAX_VOCAB_SIZE:
        raise DatasetError(f"vocab size {vocab_size} does not fit uint16 token files; use at most {MAX_VOCAB_SIZE}")
    if not 0.0 < val_fraction < 0.5:
        raise DatasetError(f"val fraction {val_fraction} must be between 0 and 0.5 (default {DEFAULT_VAL_FRACTION})")
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    try:
        str(cache_root).encode()
    except UnicodeEncodeError:  # bytes from the environment that are not UTF-8: the tokenizer library takes only text
        raise DatasetError(f"the dataset cache {str(cache_root)!r} is not a UTF-8 path; {CACHE_REMEDY}") from None
    progress("read corpus", 0, 1)
    docs = load_documents(corpus, cache_root, shards, column, progress)
    digest = corpus_hash(docs)
    progress("read corpus", 1, 1)
    rule = validation_rule(docs)
    out = cache_root / dataset_key(digest, vocab_size, val_fraction, rule)
    if out.exists():
        check_cached(out, digest, vocab_size)
        return out
    require_writable_dir(cache_root, "the dataset cache", CACHE_REMEDY)  # a read-only
    # cache that holds the dataset serves it all the same
    train_docs, val_docs = split(docs, val_fraction)
    if not val_docs or not train_docs:
        remedy = ("a .txt URL is one document: give a {shard} pattern over many (--shards N) or a .parquet file"
                  if corpus.lower().endswith(".txt") and "{shard" not in corpus else "add more documents")
        raise DatasetError(f"corpus '{corpus}' has {len(docs)} documents, too few to split into train and "
                           f"validation; {remedy}")
    remove_left_behind(cache_root, f"{out.name}.tmp-")  # builds of arenas killed before they finished
    tmp = out.with_name(f"{out.name}.tmp-{owner_tag()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp, f"the dataset cache {cache_root}", CACHE_REMEDY, DatasetError)
    progress("train tokenizer", 0, 1)
    tok = train_tokenizer(train_docs, vocab_size)
    progress("train tokenizer", 1, 1)
    if tok.get_vocab_size() < vocab_size:
        raise DatasetError(f"corpus '{corpus}' is too small to learn {vocab_size} tokens (got "
                           f"{tok.get_vocab_size()}); use a larger corpus or a smaller --vocab-size")
    tok.save(str(tmp / "tokenizer.json"))
    lengths = token_byte_lengths(tok)
    np.save(tmp / "token_bytes.npy", lengths)
    bos_id = tok.token_to_id(BOS)
    assert bos_id is not None  # the trainer was given BOS as its special token
    n_train = _encode_to_file(tok, train_docs, tmp / "train.bin", bos_id, progress, "tokenize train")
    n_val = _encode_to_file(tok, val_docs, tmp / "val.bin", bos_id, progress, "tokenize validation")
    tokenizer_digest = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
    meta = {
        "format": FORMAT_VERSION,
        "corpus": corpus,
        "corpus_sha256": digest,
        "tokenizer_sha256": tokenizer_digest,
        "fingerprint": hashlib.sha256(f"{digest}|{tokenizer_digest}|{val_fraction!r}{rule}".encode()).hexdigest()[:16],
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "val_fraction": val_fraction,
        "validation_from": "test suites only" if rule else "all documents",
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
