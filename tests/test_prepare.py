"""The trial-time data harness (train_template/prepare.py): the metric and the validation set it scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agent.dataset_build import build_dataset
from tests.test_dataset_build import SMALL_VOCAB, write_small_corpus
from train_template import prepare
from train_template.prepare import DataError


def test_uniform_logits_score_exactly_log2_vocab_times_tokens_over_bytes(stdlib_dataset):
    meta = prepare.read_meta(stdlib_dataset)
    vocab, seq_len, eval_tokens = meta["vocab_size"], 256, 65536

    def uniform(idx):
        return torch.zeros(*idx.shape, vocab)

    tally = prepare.evaluate_bpb(uniform, stdlib_dataset, seq_len, eval_tokens, batch_rows=16)
    targets = np.asarray(prepare.read_tokens(stdlib_dataset, "val")[1:eval_tokens + 1], dtype=np.int64)
    lengths = np.load(stdlib_dataset / "token_bytes.npy")
    assert tally.tokens == int((lengths[targets] > 0).sum()) < eval_tokens  # BOS targets are not scored
    assert tally.bytes == int(lengths[targets].sum())
    assert tally.bpb == pytest.approx(math.log2(vocab) * tally.tokens / tally.bytes, rel=1e-12)


def test_the_model_is_given_memory_holding_only_its_inputs(stdlib_dataset):
    """Its tokens' storage must not extend over the targets, which a crafted view could read."""
    vocab = prepare.read_meta(stdlib_dataset)["vocab_size"]
    seen = []

    def model(idx):
        seen.append(idx.untyped_storage().nbytes() == idx.numel() * idx.element_size())
        return torch.zeros(*idx.shape, vocab)

    prepare.evaluate_bpb(model, stdlib_dataset, 256, 4096, batch_rows=1)
    assert seen and all(seen)


def test_metric_rejects_wrong_logit_shapes(stdlib_dataset):
    with pytest.raises(ValueError, match="logits of shape"):
        prepare.evaluate_bpb(lambda idx: torch.zeros(*idx.shape, 7), stdlib_dataset, 256, 256)


def test_validation_split_too_small_for_eval_tokens(tmp_path):
    data = build_dataset(str(write_small_corpus(tmp_path / "corpus", 40)), tmp_path / "cache", vocab_size=SMALL_VOCAB)
    with pytest.raises(DataError, match="lower --eval-tokens"):
        prepare.validation_rows(data, 256, 256 * 10_000)
