"""Building a dataset: corpus sources, stable split, exact bytes, fingerprints, downloads, bad input."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from agent.corpus import Document, corpus_hash, is_validation, split, stdlib_documents, validation_rule
from agent.dataset_build import build_dataset, dataset_key
from agent.errors import DatasetError
from agent.tokenizer import BOS
from sandbox.hidden_stdlib import STDLIB_MARKERS, find_test_suites, in_test_suite, stdlib_copies
from tests.conftest import ROOT
from train_template.prepare import read_meta

SMALL_VOCAB = 512


def write_small_corpus(root: Path, n_files: int = 120) -> Path:
    """A directory corpus of real text: a deterministic slice of the standard library, plus odd bytes."""
    root.mkdir(parents=True, exist_ok=True)
    docs = stdlib_documents()[:n_files]
    for i, doc in enumerate(docs):
        (root / f"{i:04d}.txt").write_text(doc.text)
    (root / "odd.txt").write_bytes("naïve café — ünïcödé 🚀\n".encode() + b"\xff\xfe broken \x80 bytes\n")
    return root


def test_token_bytes_are_exact_for_real_text(stdlib_dataset):
    tok = Tokenizer.from_file(str(stdlib_dataset / "tokenizer.json"))
    lengths = np.load(stdlib_dataset / "token_bytes.npy")
    texts = [d.text for d in stdlib_documents()[:200]] + ["naïve café — 🚀 日本語 ∑x²"]
    assert any(len(t.encode()) != len(t) for t in texts)  # multi-byte characters are covered
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert lengths[tok.token_to_id(BOS)] == 0


def test_split_depends_only_on_each_document():
    docs = [Document(str(i), f"document number {i}\n" * (i % 7 + 1)) for i in range(400)]
    val = {d.text for d in docs if is_validation(d, 0.1)}
    shuffled = list(reversed(docs))
    assert val == {d.text for d in shuffled if is_validation(d, 0.1)}
    assert 20 < len(val) < 60


def test_only_documents_that_may_validate_are_drawn_and_at_the_overall_rate():
    plain = [Document(str(i), f"document number {i}\n" * (i % 7 + 1)) for i in range(400)]
    train, val = split(plain, 0.1)
    assert val == [d for d in plain if is_validation(d, 0.1)] and len(train) + len(val) == 400  # as before
    mixed = [Document(d.name, d.text, may_validate=i % 3 == 0) for i, d in enumerate(plain)]
    train, val = split(mixed, 0.1)
    assert all(d.may_validate for d in val) and 25 < len(val) < 55  # ~10% of all 400, from a third of them
    assert {d.name for d in train} | {d.name for d in val} == {d.name for d in plain}
    assert split([Document("a", "x", may_validate=False), Document("b", "y")], 0.4)[1] == [Document("b", "y")]


def test_the_stdlib_validates_only_on_test_suites_that_no_sandbox_shows(tmp_path):
    docs = stdlib_documents()
    train, val = split(docs, 0.1)
    assert all(in_test_suite(d.name) for d in val) and 0.07 < len(val) / len(docs) < 0.13
    assert any(d.name == "json/decoder.py" for d in train)  # what Python runs stays visible, in training
    elsewhere = {d.text for d in docs if not in_test_suite(d.name)}
    assert not any(d.may_validate for d in docs if d.text in elsewhere)  # no copy of it outside the tests
    rule = validation_rule(docs)
    assert rule and dataset_key("c" * 64, 2048, 0.1, rule) != dataset_key("c" * 64, 2048, 0.1, "")
    fewer = [dataclasses.replace(d, may_validate=False) if d.name.startswith("unittest/") else d for d in docs]
    assert validation_rule(fewer) != rule  # another rule never finds a dataset built under this one


def test_every_standard_library_in_a_tree_is_found_with_its_test_suites(tmp_path):
    """conda keeps copies in its environments and package cache, an application may bundle one: each is found
    by what it holds, and only the test suites of a standard library are hidden."""
    libs = [tmp_path / "lib/python3.11", tmp_path / "pkgs/python-3.11.7-0/lib/python3.11",
            tmp_path / "envs/old/lib/python3.9", tmp_path / "share/app/bundled/lib/python3.12"]
    for lib in libs:
        for directory in ("test/support", "json", "unittest/test/testmock", "site-packages/pkg/tests",
                          "idlelib/idle_test"):
            (lib / directory).mkdir(parents=True)
        for name in STDLIB_MARKERS:
            (lib / name).write_text("")
    (tmp_path / "lib/python3.11/site-packages/numpy/tests").mkdir(parents=True)  # a package's: not hidden
    assert stdlib_copies([tmp_path]) == sorted(libs)
    hidden = find_test_suites(stdlib_copies([tmp_path]))
    assert sorted(hidden) == sorted(lib / name for lib in libs for name in ("test", "idlelib/idle_test",
                                                                            "unittest/test"))


def test_default_corpus_is_the_stdlib_in_sorted_order(stdlib_dataset):
    docs = stdlib_documents()
    names = [d.name for d in docs]
    assert names == sorted(names) and len(docs) > 500
    meta = read_meta(stdlib_dataset)
    assert meta["corpus_sha256"] == corpus_hash(docs)
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(docs)
    assert meta["tokens"]["val"] > 65536  # the cpu preset's validation set fits


@pytest.mark.slow  # two child processes build a dataset each (7 s)
def test_fingerprint_is_deterministic_across_processes(tmp_path):
    corpus = write_small_corpus(tmp_path / "corpus")
    script = ("import sys; from agent.dataset_build import build_dataset; "
              f"d = build_dataset({str(corpus)!r}, sys.argv[1], vocab_size={SMALL_VOCAB}); "
              "print((d / 'meta.json').read_text())")
    metas = []
    for cache in ("a", "b"):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / cache)], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout
        metas.append(json.loads(out))
    assert metas[0]["fingerprint"] == metas[1]["fingerprint"]
    assert metas[0]["tokenizer_sha256"] == metas[1]["tokenizer_sha256"]
    a, b = (next((tmp_path / c).glob("*/train.bin")).read_bytes() for c in ("a", "b"))
    assert a == b


@pytest.mark.slow  # builds datasets: tokenizer training and all
def test_a_different_corpus_has_a_different_fingerprint(tmp_path):
    corpus = write_small_corpus(tmp_path / "corpus")
    first = read_meta(build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB))
    (corpus / "extra.txt").write_text("one more document\n" * 50)
    second = read_meta(build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB))
    assert first["fingerprint"] != second["fingerprint"]


class _ShardServer(http.server.SimpleHTTPRequestHandler):
    failures_left = 0  # answer this many requests with 503 first, to exercise the retry

    def do_GET(self):
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_error(503)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    docs = [d.text for d in stdlib_documents()[:150]]
    for shard in range(3):
        pq.write_table(pa.table({"text": docs[shard::3], "id": list(range(len(docs[shard::3])))}),
                       root / f"shard_{shard:05d}.parquet")
    handler = lambda *a, **k: _ShardServer(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", docs
    server.shutdown()


@pytest.mark.slow  # builds datasets: tokenizer training and all
def test_parquet_shards_from_a_url(shard_server, tmp_path):
    base, docs = shard_server
    _ShardServer.failures_left = 2  # two transient errors, then success
    data = build_dataset(base + "/shard_{shard:05d}.parquet", tmp_path / "cache", vocab_size=SMALL_VOCAB,
                           shards=3)
    meta = read_meta(data)
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(docs)
    assert len(list((tmp_path / "cache" / "downloads").glob("*.parquet"))) == 3
    assert not list((tmp_path / "cache" / "downloads").glob("*.tmp*"))
    # a second prepare is served from the cache: same directory, no new downloads needed
    _ShardServer.failures_left = 10**6
    assert build_dataset(base + "/shard_{shard:05d}.parquet", tmp_path / "cache", vocab_size=SMALL_VOCAB,
                           shards=3) == data


def test_missing_url_is_a_clear_error(shard_server, tmp_path):
    base, _ = shard_server
    _ShardServer.failures_left = 0
    with pytest.raises(DatasetError, match="HTTP 404; check the URL"):
        build_dataset(base + "/nothing.parquet", tmp_path / "cache", vocab_size=SMALL_VOCAB)


@pytest.mark.slow  # builds datasets: tokenizer training and all
def test_directory_of_parquet_and_text(tmp_path):
    corpus = write_small_corpus(tmp_path / "corpus", n_files=60)
    texts = [d.text for d in stdlib_documents()[200:260]]
    pq.write_table(pa.table({"body": texts}), corpus / "more.parquet")
    with pytest.raises(DatasetError, match="--text-column"):
        build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB)
    meta = read_meta(build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB, column="body"))
    assert meta["documents"]["train"] + meta["documents"]["val"] == 61 + 60


@pytest.mark.parametrize("setup, kwargs, message", [
    (lambda p: p / "absent", {}, "does not exist"),
    (lambda p: p, {}, "no .txt or .parquet files"),
    (lambda p: (p / "blank.txt").write_text("  \n") and p, {}, "is empty"),
    (lambda p: (p / "bad.parquet").write_bytes(b"not parquet at all") and p, {}, "not a readable parquet file"),
    (lambda p: (p / "one.txt").write_text("a single document " * 100) and p, {}, "too few to split"),
    (lambda p: write_small_corpus(p, 30), {"vocab_size": 100}, "too small; use at least 512"),
    (lambda p: write_small_corpus(p, 20), {"vocab_size": 65536}, "too small to learn 65536 tokens"),
])
def test_bad_corpora_are_one_line_errors(tmp_path, setup, kwargs, message):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    corpus = setup(corpus_dir)
    with pytest.raises(DatasetError) as err:
        build_dataset(str(corpus), tmp_path / "cache", **{"vocab_size": SMALL_VOCAB, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def edit_meta(data_dir: Path, **changes) -> None:
    meta = json.loads((data_dir / "meta.json").read_text())
    (data_dir / "meta.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / "train.bin", 1000), "train.bin holds 500 tokens, not the"),
    (lambda d: truncate(d / "val.bin", 1001), "val.bin holds 500 tokens"),
    (lambda d: (d / "meta.json").unlink(), "FileNotFoundError"),
    (lambda d: (d / "meta.json").write_text("garbage"), "JSONDecodeError"),
    (lambda d: (d / "meta.json").write_bytes(b"\xff"), "UnicodeDecodeError"),
    (lambda d: edit_meta(d, vocab_size=99), "names another corpus or vocabulary"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json is not the one it was built with"),
    (lambda d: (d / "token_bytes.npy").unlink(), "FileNotFoundError"),
    (lambda d: truncate(d / "token_bytes.npy", 200), "ValueError"),
])
def test_a_damaged_cached_dataset_is_one_line_that_says_to_rebuild_it(tmp_path, damage, message):
    """It was served as it was: trained on 500 tokens and called ok, or blamed the model for a short val.bin."""
    corpus = write_small_corpus(tmp_path / "corpus", n_files=60)
    built = build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB)
    damage(built)
    with pytest.raises(DatasetError) as err:
        build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB)
    assert message in str(err.value) and "delete that directory and run again" in str(err.value)
    shutil.rmtree(built)  # the advice works
    assert read_meta(build_dataset(str(corpus), tmp_path / "cache", vocab_size=SMALL_VOCAB))["tokens"]["train"] > 500


def test_a_cache_path_that_is_not_utf8_is_one_line_before_any_work(tmp_path):
    """ARENA_CACHE with bytes that are not UTF-8: the tokenizer library failed on it after the whole build."""
    with pytest.raises(DatasetError, match="is not a UTF-8 path; pass another --cache"):
        build_dataset("stdlib", tmp_path / os.fsdecode(b"cache\xff"), vocab_size=SMALL_VOCAB)
    assert list(tmp_path.iterdir()) == []
