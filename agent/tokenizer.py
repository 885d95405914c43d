"""The dataset's tokenizer: a byte-level BPE trained on the training documents, and each token's exact bytes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from agent.corpus import Document
from agent.errors import DatasetError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS = "<|bos|>"  # the one special token: it begins every document in train.bin and val.bin
TOKENIZER_TRAIN_CHARS = 1_000_000_000  # cap on text fed to BPE training (autoresearch uses 1e9 too)
# GPT-4 style pre-split, digits grouped by at most two (autoresearch's choice for small vocabularies).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


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


def train_tokenizer(docs: list[Document], vocab_size: int) -> Tokenizer:
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


def token_byte_lengths(tok: Tokenizer) -> npt.NDArray[np.int32]:
    """Exact UTF-8 length of each token, read from its byte-level form (0 for special tokens)."""
    table = byte_level_decoder_table()
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece in special else len(piece)  # one alphabet character per byte
        if piece not in special and any(ch not in table for ch in piece):
            raise DatasetError(f"token {piece!r} is not byte-level; delete the dataset cache and prepare again")
    return lengths
