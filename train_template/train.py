"""A small modern GPT, trained for a fixed wall-clock budget. This is the file trials edit.

Contract with the harness (prepare.py / harness.py, which trials cannot change):
    train(ctx) -> torch.nn.Module mapping token ids (B, T) to logits (B, T, vocab).
`ctx` offers the device, the seed, the vocabulary size, the sequence length, training batches
(`ctx.batches(n)`), the training clock (`ctx.progress()`, `ctx.should_stop()`) and a progress
line (`ctx.log_step(step, loss)`). The harness scores the returned model itself (val_bpb).
The model must be exportable with torch.export (plain tensor code, no data-dependent Python).

Lineage: the architecture and optimizer follow karpathy/nanochat and karpathy/autoresearch
(RMSNorm, rotary, QK-norm, ReLU^2, value embeddings, sliding windows, Muon + AdamW).
"""

# ==== ARENA CONSTANTS BEGIN (fixed-space methods edit only the lines up to ARENA CONSTANTS END) ====
DEPTH = 8                 # transformer layers
ASPECT_RATIO = 64         # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128            # channels per attention head
WINDOW_PATTERN = "SSSL"   # attention window per layer, tiled: S = short window, L = full context
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128   # sequences per forward/backward; gradients accumulate up to TOTAL_BATCH_SIZE
EMBEDDING_LR = 0.6        # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004    # AdamW, output head
MATRIX_LR = 0.04          # Muon, hidden matrices
SCALAR_LR = 0.5           # AdamW, per-layer residual scalars
WEIGHT_DECAY = 0.2        # Muon's (cautious) weight decay, itself decayed linearly to 0 over the budget
WARMUP_RATIO = 0.0        # fraction of the budget spent ramping the learning rate up
WARMDOWN_RATIO = 0.5      # fraction of the budget spent ramping the learning rate down at the end
FINAL_LR_FRAC = 0.0       # learning rate at the end of the budget, as a fraction of the peak
# ==== ARENA CONSTANTS END ====

import contextlib
import gc
import math
from dataclasses import dataclass

import torch
import torch._dynamo  # torch.optim's first optimizer imports it (1-5 s on a CPU): now, not on the clock
import torch.nn as nn
import torch.nn.functional as F

SHORT_WINDOW_DIVISOR = 8  # S window = seq_len / 8; autoresearch's mar8 session kept 1/8 over 1/2
LOGIT_SOFTCAP = 15.0      # logits = cap * tanh(logits / cap), as in nanochat
ROPE_BASE = 10_000
VE_GATE_CHANNELS = 32     # value-embedding gate reads the first 32 channels of the residual stream
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = (0.85, 0.95, 300)  # momentum ramps from the first to the second value over this many steps
NEWTON_SCHULZ = "polar_express"  # Muon's orthogonalization: "polar_express" (a quintic per iteration) or "fixed"
NORMUON_BETA2 = 0.95      # NorMuon: each neuron's update over the running RMS of its own updates; 0 turns it off
CAUTIOUS_WEIGHT_DECAY = True  # decay a weight only where its update has the weight's sign (as autoresearch)
REFERENCE_WIDTH = 768     # AdamW learning rates scale with (width / 768) ** -0.5 (nanochat's muP-style rule)


# ---------------------------------------------------------------------------- model

@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    head_dim: int
    windows: tuple[int, ...]

    @property
    def width(self) -> int:
        return self.n_head * self.head_dim


def build_config(vocab_size: int, seq_len: int) -> GPTConfig:
    width = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    pattern = (WINDOW_PATTERN * DEPTH)[:DEPTH]
    if set(pattern) - {"S", "L"}:
        raise ValueError(f"WINDOW_PATTERN {WINDOW_PATTERN!r} may only contain S and L")
    short = max(1, seq_len // SHORT_WINDOW_DIVISOR)
    windows = tuple(short if c == "S" else seq_len for c in pattern[:-1]) + (seq_len,)  # last layer sees everything
    return GPTConfig(vocab_size, seq_len, DEPTH, width // HEAD_DIM, HEAD_DIM, windows)


def norm(x: torch.Tensor) -> torch.Tensor:
    # in x's dtype: CUDA autocast computes rms_norm in float32 from torch 2.12 on, and q and k would reach
    # attention in float32 where torch 2.11 and older gave bf16
    return F.rms_norm(x, (x.size(-1),)).type_as(x)


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


_block_masks: dict = {}


def sliding_window_mask(T: int, window: int, device: torch.device):
    """FlexAttention's block mask for causal attention over the last `window` keys, built once per shape.

    train() builds the masks eagerly before the first compiled call: a mask first built inside the
    compiled graph would be recomputed on every call, and filling this cache mid-trace makes the
    next call fail its guards and compile the whole model a second time (about 20 s on an H100).
    """
    key = (T, window, str(device))
    if key not in _block_masks:
        from torch.nn.attention.flex_attention import create_block_mask

        def sliding(b, h, qi, ki):
            return (qi >= ki) & (qi - ki < window)
        _block_masks[key] = create_block_mask(sliding, None, None, T, T, device=device)
    return _block_masks[key]


def exporting() -> bool:
    """True while torch.export traces the model, False under torch.compile.

    torch.compiler.is_exporting() cannot tell the two apart in torch 2.11 and older: TorchDynamo folds
    it to True in any compiled code, which sent the training graph's short-window layers down the
    masked-SDPA path (on an H100, 12.7 ms forward+backward per layer against FlexAttention's 3.0 ms).
    The flag behind it is read instead; Dynamo reads a module attribute by value and guards on it.
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def attention_priority(cfg: GPTConfig, device: str, batch: int):
    """On the GPU, SDPA tries cuDNN attention first: on Hopper it ran the full-context layers' forward+backward in
    2.64 ms against flash's 4.40 ms at this shape, and torch's default order (flash, efficient, math, cuDNN)
    would never reach it. A backend that cannot take a call (no cuDNN, an unsupported head size) passes it on."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if cudnn_attention_runs(cfg, device, batch):
        order.insert(0, SDPBackend.CUDNN_ATTENTION)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the probe's blocks (about 2 GB at the gpu preset) back to the device
    return sdpa_kernel(order, set_priority=True)


def cudnn_attention_runs(cfg: GPTConfig, device: str, batch: int) -> bool:
    """Whether cuDNN attention runs at the training step's shape. Its checks before a call pass on what it cannot
    take, but it builds its plan at run time, and a compiled graph that chose it would crash on its first step
    where that fails (a cuDNN without a plan for this shape). One eager forward and backward decides, at the
    step's batch and with its layout: (B, H, T, D) views of (B, T, H, D) tensors."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def head_major() -> torch.Tensor:
        x = torch.randn(batch, cfg.seq_len, cfg.n_head, cfg.head_dim, device=device, dtype=torch.bfloat16)
        return x.transpose(1, 2).requires_grad_()

    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            y = F.scaled_dot_product_attention(head_major(), head_major(), head_major(), is_causal=True)
            y.backward(torch.randn_like(y))
    except RuntimeError:  # torch.OutOfMemoryError included: the step itself will say so
        return False
    return True


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention over (B, H, T, D) with a sliding window of `window` keys."""
    T = q.size(-2)
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # cuDNN/flash on GPU: the fastest path
    # FlexAttention needs torch.compile to be fast, and the exported program must stay plain aten ops.
    if q.is_cuda and torch.compiler.is_compiling() and not exporting():
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=sliding_window_mask(T, window, q.device))
    pos = torch.arange(T, device=q.device)
    offset = pos[:, None] - pos[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(offset >= 0) & (offset < window))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, has_value_embedding: bool):
        super().__init__()
        width, self.n_head, self.head_dim = cfg.width, cfg.n_head, cfg.head_dim
        self.c_q = nn.Linear(width, width, bias=False)
        self.c_k = nn.Linear(width, width, bias=False)
        self.c_v = nn.Linear(width, width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.window = cfg.windows[layer]
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, cfg.n_head, bias=False) if has_value_embedding else None

    def forward(self, x, value_embedding, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if self.ve_gate is not None:  # value residual: mix a per-token embedding into v, gated per head
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            # in v's dtype: the float32 embedding would make v float32 under autocast, and FlexAttention in
            # torch 2.11 and older refuses q, k and v of different dtypes
            v = v + (gate.unsqueeze(-1) * value_embedding.view(B, T, self.n_head, self.head_dim)).to(v.dtype)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.window)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, has_value_embedding: bool):
        super().__init__()
        self.attn = Attention(cfg, layer, has_value_embedding)
        self.mlp = MLP(cfg.width)

    def forward(self, x, value_embedding, cos, sin):
        x = x + self.attn(norm(x), value_embedding, cos, sin)
        return x + self.mlp(norm(x))


def has_value_embedding(layer: int, n_layer: int) -> bool:
    return layer % 2 == (n_layer - 1) % 2  # alternate layers, always including the last


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(
            Block(cfg, i, has_value_embedding(i, cfg.n_layer)) for i in range(cfg.n_layer))
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(cfg.vocab_size, cfg.width)
            for i in range(cfg.n_layer) if has_value_embedding(i, cfg.n_layer)})
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(cfg.n_layer))
        cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        bound = 3 ** 0.5 * self.cfg.width ** -0.5  # uniform with std 1/sqrt(width)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2*sigmoid(0) = 1: plain value residual
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) in float32, or the mean cross-entropy when targets are given."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6 per matmul weight plus the attention score and value products."""
        matmul_params = sum(p.numel() for n, p in self.named_parameters()
                            if p.dim() == 2 and not n.startswith(("wte", "value_embeds")))
        attention = sum(12 * self.cfg.width * min(w, self.cfg.seq_len) for w in self.cfg.windows)
        return 6 * matmul_params + attention


# ---------------------------------------------------------------------------- optimizer

# Quintic iterations x <- a x + b (x x^T) x + c (x x^T)^2 x, and the factor the input's norm is inflated by
# first so that its largest singular value starts below 1. "fixed": Keller Jordan's Muon, one quintic five
# times. "polar_express": Amsel et al. (2025), each iteration's quintic optimal for the spectrum the one
# before it leaves (the coefficients and the 1.02 margin autoresearch uses).
NEWTON_SCHULZ_ITERATIONS = {
    "fixed": (1.0, ((3.4445, -4.7750, 2.0315),) * 5),
    "polar_express": (1.02, (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.042929935166739, -2.808917465908714, 0.5000178451051316),
        (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
        (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
        (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
    )),
}


def orthogonalize(g: torch.Tensor, margin: float, quintics: tuple) -> torch.Tensor:
    """Approximate the nearest semi-orthogonal matrix of each matrix in a stack (..., rows, cols)."""
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * margin + 1e-7)
    for a, b, c in quintics:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def even_out_neurons(update: torch.Tensor, second_moment: torch.Tensor, beta2: torch.Tensor) -> torch.Tensor:
    """NorMuon: scale each neuron's update (a row of a tall matrix, a column of a wide one) by the inverse
    running RMS of its own updates, then restore the matrix's norm; orthogonalized updates leave some
    neurons with far larger steps than others."""
    u = update.float()
    mean_square = u.square().mean(dim=-1 if u.size(-2) >= u.size(-1) else -2, keepdim=True)
    second_moment.lerp_(mean_square, 1 - beta2)
    scaled = u * second_moment.clamp_min(1e-10).rsqrt()
    norm = u.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return (scaled * norm).to(update.dtype)


def muon_update(params: torch.Tensor, grads: torch.Tensor, momentum_buffer: torch.Tensor,
                second_moment: torch.Tensor | None, momentum: torch.Tensor, lr: torch.Tensor,
                weight_decay: torch.Tensor, beta2: torch.Tensor, newton_schulz: str, cautious: bool) -> None:
    """One Muon step on a stack of same-shape matrices, in place. The changing scalars are 0-d tensors, so
    that the compiled version is traced once, not again for every new learning rate."""
    momentum = momentum.to(grads.dtype)  # one dtype in each lerp_, also for a model cast to bf16
    momentum_buffer.lerp_(grads, 1 - momentum)
    update = orthogonalize(grads.lerp_(momentum_buffer, momentum), *NEWTON_SCHULZ_ITERATIONS[newton_schulz])
    if second_moment is not None:
        update = even_out_neurons(update, second_moment, beta2)
    decay = weight_decay * (update * params >= 0) if cautious else weight_decay
    params.sub_(lr * (update + decay * params))


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose updates are orthogonalized; params of one shape are stacked."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, compile: bool = False):
        params = list(params)
        shapes = sorted({p.shape for p in params})
        groups = [{"params": [p for p in params if p.shape == s]} for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        if NEWTON_SCHULZ not in NEWTON_SCHULZ_ITERATIONS:
            raise ValueError(f"NEWTON_SCHULZ must be one of {sorted(NEWTON_SCHULZ_ITERATIONS)}, got {NEWTON_SCHULZ!r}")
        # On the GPU the whole step compiles to a few fused kernels per shape instead of dozens of launches;
        # dynamic=False gives each parameter shape its own static graph.
        self.update = torch.compile(muon_update, dynamic=False, fullgraph=True) if compile else muon_update
        # On the parameters' device, so that an eager fallback never mixes devices in one operation; all
        # but beta2 are set again before every step.
        self.scalars = {name: torch.tensor(NORMUON_BETA2 if name == "beta2" else 0.0, dtype=torch.float32,
                                           device=params[0].device)
                        for name in ("momentum", "lr", "wd", "beta2")}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            if all(p.grad is None for p in params):
                continue
            state = self.state[params[0]]
            rows, cols = params[0].shape[-2:]
            if "momentum" not in state:
                state["momentum"] = torch.zeros(len(params), rows, cols, dtype=params[0].dtype,
                                                device=params[0].device)
                neuron_shape = (rows, 1) if rows >= cols else (1, cols)
                state["second_moment"] = torch.zeros(len(params), *neuron_shape, dtype=torch.float32,
                                                     device=params[0].device) if NORMUON_BETA2 > 0 else None
            stacked = torch.stack(params)
            self.scalars["momentum"].fill_(group["momentum"])
            self.scalars["lr"].fill_(group["lr"] * max(1.0, rows / cols) ** 0.5)
            self.scalars["wd"].fill_(group["weight_decay"])
            grads = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in params])
            self.update(stacked, grads, state["momentum"], state["second_moment"],
                        self.scalars["momentum"], self.scalars["lr"], self.scalars["wd"], self.scalars["beta2"],
                        NEWTON_SCHULZ, CAUTIOUS_WEIGHT_DECAY)
            torch._foreach_copy_(params, list(stacked.unbind(0)))


def build_optimizers(model: GPT, fused: bool) -> list[torch.optim.Optimizer]:
    scale = (model.cfg.width / REFERENCE_WIDTH) ** -0.5
    adam_groups = [
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(params=[model.wte.weight, *model.value_embeds.parameters()], lr=EMBEDDING_LR * scale),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    adam = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=fused)
    muon = Muon(model.blocks.parameters(), lr=MATRIX_LR, momentum=MUON_MOMENTUM[0], weight_decay=WEIGHT_DECAY,
                compile=fused)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress <= 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------- training

def train(ctx) -> nn.Module:
    cfg = build_config(ctx.vocab_size, ctx.seq_len)
    cuda = ctx.device.startswith("cuda")
    model = GPT(cfg).to(ctx.device)
    model.init_weights()
    optimizers = build_optimizers(model, fused=cuda)
    forward = torch.compile(model, dynamic=False) if cuda else model
    if cuda:  # the sliding-window masks, built eagerly so the compiled graph reads them as constants
        for window in set(cfg.windows):
            if window < cfg.seq_len:
                sliding_window_mask(cfg.seq_len, window, model.cos.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    accum_steps = max(1, TOTAL_BATCH_SIZE // (DEVICE_BATCH_SIZE * ctx.seq_len))
    batches = ctx.batches(DEVICE_BATCH_SIZE)

    with attention_priority(cfg, ctx.device, DEVICE_BATCH_SIZE) if cuda else contextlib.nullcontext():
        try:
            return train_loop(ctx, model, forward, optimizers, autocast, accum_steps, batches)
        finally:
            gc.enable()  # the export after training makes cyclic garbage of its own


def train_loop(ctx, model, forward, optimizers, autocast, accum_steps, batches) -> nn.Module:
    muon = optimizers[-1]
    step = 0
    while True:  # at least one step: building the model already counts against the budget
        for _ in range(accum_steps):
            x, y = next(batches)
            with autocast:
                loss = forward(x, y)
            (loss / accum_steps).backward()
        progress = ctx.progress()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        start, end, ramp = MUON_MOMENTUM
        for group in muon.param_groups:
            group["momentum"] = start + (end - start) * min(1.0, step / ramp)
            group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        ctx.log_step(step, loss.item())  # the harness stops a diverged run here
        if step == 0:  # everything long-lived exists now: a collection mid-run stalls a GPU step ~0.5 s
            gc.collect()
            gc.freeze()
            gc.disable()
        step += 1
        if ctx.should_stop():
            return model
