"""Stands in for the `kernels` package when bench/versus_autoresearch.py runs karpathy/autoresearch's train.py.

autoresearch downloads a FlashAttention-3 kernel with `get_kernel(repo).flash_attn_interface` and calls its
`flash_attn_func(q, k, v, causal=True, window_size=(left, 0))` on (batch, time, heads, head_dim) tensors.
Here that call is PyTorch's own attention, with nothing downloaded: SDPA in torch's default backend order for
layers that see the whole context (what "autoresearch with SDPA" means), FlexAttention for sliding windows
(what the template uses for them), so the comparison is of everything but a downloaded kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_block_masks: dict = {}


def sliding_window_mask(T: int, left: int, device: torch.device):
    """FlexAttention's block mask for FA3's window (left, 0): each query sees itself and the `left` keys before it.

    Built eagerly (prepare.make_dataloader does it before the first compiled call): a mask first made inside a
    compiled graph is remade on every call, and filling this cache mid-trace makes the next call recompile."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" made beforehand is "cuda:0" in q.device
        device = torch.device("cuda", torch.cuda.current_device())
    key = (T, left, str(device))
    if key not in _block_masks:
        from torch.nn.attention.flex_attention import create_block_mask

        def window(b, h, qi, ki):
            return (qi >= ki) & (qi - ki <= left)
        _block_masks[key] = create_block_mask(window, None, None, T, T, device=device)
    return _block_masks[key]


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    window_size: tuple[int, int] = (-1, -1), **unsupported) -> torch.Tensor:
    """FA3's flash_attn_func for what autoresearch asks of it: causal attention, a window to the left or none."""
    left, right = window_size
    if not causal or right not in (0, -1) or unsupported:
        raise NotImplementedError("this stand-in for FlashAttention-3 does causal attention with a left window only")
    T = q.size(1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA and FlexAttention take (batch, heads, time, dim)
    gqa = k.size(1) != q.size(1)
    if left < 0 or left >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif q.is_cuda:
        from torch.nn.attention.flex_attention import flex_attention

        y = flex_attention(q, k, v, block_mask=sliding_window_mask(T, left, q.device), enable_gqa=gqa)
    else:  # FlexAttention has no backward on the CPU
        offset = torch.arange(T, device=q.device)[:, None] - torch.arange(T, device=q.device)[None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=(offset >= 0) & (offset <= left), enable_gqa=gqa)
    return y.transpose(1, 2)


class _FlashAttentionInterface:
    flash_attn_func = staticmethod(flash_attn_func)


class _Kernel:
    flash_attn_interface = _FlashAttentionInterface


def get_kernel(repo: str, *args, **kwargs) -> _Kernel:
    return _Kernel()
