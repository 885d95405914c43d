"""The template's attention on a GPU, in what a CPU can check: q, k and v reach attention in one dtype under
autocast, and cuDNN attention goes first only where it runs."""

from __future__ import annotations

import pytest
import torch

from agent.template import template_dir
from tests.conftest import import_file


@pytest.fixture(scope="module")
def template():
    return import_file("train_template_attention", template_dir() / "train.py")


def test_q_k_and_v_reach_attention_in_the_autocast_dtype(template, monkeypatch):
    """The value embedding is a float32 weight: mixed into v unconverted, it made v float32 while q and k were
    bf16, which FlexAttention before torch 2.12 refuses."""
    seen = []
    attend = template.attend
    monkeypatch.setattr(template, "attend", lambda q, k, v, window: (seen.append((q.dtype, k.dtype, v.dtype)),
                                                                      attend(q, k, v, window))[1])
    cfg = template.build_config(512, 64)
    model = template.GPT(cfg)
    model.init_weights()
    tokens = torch.randint(0, 512, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(tokens, tokens)
    assert len(seen) == cfg.n_layer and set(seen) == {(torch.bfloat16,) * 3}, seen


def test_cudnn_attention_goes_first_only_where_it_runs(template):
    """cuDNN attention builds its plan at run time, past the checks that let SDPA pass a call on; where it does
    not run (here: a CPU) the order leaves it out instead of crashing the compiled graph's first step."""
    from torch.nn.attention import SDPBackend

    cfg = template.build_config(512, 64)
    assert template.cudnn_attention_runs(cfg, "cpu", 2) is False
    with template.attention_priority(cfg, "cpu", 2):
        order = torch._C._get_sdp_priority_order()
    assert order[0] == SDPBackend.FLASH_ATTENTION.value and order.index(SDPBackend.CUDNN_ATTENTION.value) > 2
