"""The template's Muon: Polar Express orthogonalization, NorMuon, cautious weight decay, and a step that
compiles to one graph (autoresearch's optimizer, built here; bench/parity.py compares the switches)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch._dynamo.testing

from agent.template import template_dir
from tests.conftest import import_file


@pytest.fixture(scope="module")
def template():
    return import_file("train_template_optimizer", template_dir() / "train.py")


def scalars(momentum=0.9, lr=0.02, weight_decay=0.1, beta2=0.95) -> list[torch.Tensor]:
    return [torch.tensor(v) for v in (momentum, lr, weight_decay, beta2)]


@pytest.mark.parametrize("shape", [(3, 64, 256), (2, 256, 64)])
def test_both_iterations_orthogonalize_and_polar_express_gets_closer(template, shape):
    """Every singular value of the result lies near 1; Polar Express lifts the smallest ones further than
    the fixed quintic does in the same five iterations (what it was designed for)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[0] *= 1e-3  # the scale of the input must not matter
    low = {}
    for name, (margin, quintics) in template.NEWTON_SCHULZ_ITERATIONS.items():
        out = template.orthogonalize(g, margin, quintics)
        assert out.shape == g.shape and out.dtype == g.dtype
        values = torch.linalg.svdvals(out)
        assert values.max() < 1.25 and values.min() > 0.5, name
        low[name] = float(values.min())
    assert low["polar_express"] > low["fixed"] + 0.1


def test_normuon_evens_out_neurons_and_keeps_the_norm(template):
    """One step from an empty second moment: every row of a tall update (column of a wide one) ends with
    the same RMS, and the matrix keeps its Frobenius norm; the running moment carries over to the next."""
    gen = torch.Generator().manual_seed(1)
    for shape, axis in (((2, 96, 32), -1), ((2, 32, 96), -2)):
        update = torch.randn(*shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 5
        if axis == -2:
            update = update * torch.rand(shape[0], 1, shape[-1], generator=gen) * 5
        moment = torch.zeros(shape[0], shape[1], 1) if axis == -1 else torch.zeros(shape[0], 1, shape[2])
        out = template.even_out_neurons(update, moment, torch.tensor(0.95))
        rms = out.square().mean(dim=axis).sqrt()
        assert torch.allclose(rms, rms.mean(dim=-1, keepdim=True), rtol=1e-4)
        assert torch.allclose(out.norm(dim=(-2, -1)), update.norm(dim=(-2, -1)), rtol=1e-5)
        assert torch.allclose(moment, 0.05 * update.square().mean(dim=axis, keepdim=True))


def test_cautious_weight_decay_spares_weights_their_update_pushes_away_from_zero(template):
    """With the same gradient, the cautious step differs from the undecayed one by lr*wd*w exactly where
    the update agrees in sign with the weight (it moves the weight toward zero anyway), and not elsewhere;
    plain decay shrinks every weight."""
    gen = torch.Generator().manual_seed(2)
    weights, grads = torch.randn(2, 48, 32, generator=gen), torch.randn(2, 48, 32, generator=gen)

    def step(weight_decay, cautious):
        params = weights.clone()
        template.muon_update(params, grads.clone(), torch.zeros_like(params), None,
                             *scalars(momentum=0.0, lr=0.05, weight_decay=weight_decay), "polar_express", cautious)
        return params

    update = (weights - step(0.0, False)) / 0.05
    agree = update * weights >= 0
    assert 0.2 < agree.float().mean() < 0.8
    decay = step(0.0, True) - step(0.1, True)
    assert torch.allclose(decay, torch.where(agree, 0.05 * 0.1 * weights, 0.0), atol=1e-6)
    assert torch.allclose(step(0.0, False) - step(0.1, False), 0.05 * 0.1 * weights, atol=1e-6)


def test_the_step_traces_to_one_graph_that_new_learning_rates_do_not_retrace(template):
    """The GPU compiles muon_update whole (fullgraph): no graph break, and the scalars that change every
    step are tensors, so ten steps with ten learning rates reuse one graph; it matches the eager step."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(template.muon_update, backend=counter, dynamic=False, fullgraph=True)
    gen = torch.Generator().manual_seed(3)
    params = torch.randn(2, 64, 32, generator=gen)
    eager_params = params.clone()
    buffers = [torch.zeros_like(params), torch.zeros(2, 64, 1)]
    eager_buffers = [b.clone() for b in buffers]
    for step in range(10):
        grads = torch.randn(2, 64, 32, generator=gen)
        values = scalars(momentum=0.85 + step / 100, lr=0.02 * (1 - step / 10), weight_decay=0.2 * (1 - step / 10))
        compiled(params, grads.clone(), *buffers, *values, "polar_express", True)
        template.muon_update(eager_params, grads.clone(), *eager_buffers, *values, "polar_express", True)
    assert counter.frame_count == 1
    assert torch.allclose(params, eager_params, atol=1e-5)


@pytest.mark.slow  # a cold Inductor compile
@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                                                 reason="Inductor compiles C++ on a CPU: no g++ (or $CXX)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))])
def test_inductor_compiles_the_step_once_and_it_matches_eager(template, device):
    """What a GPU trial runs: Muon with compile=True (Inductor, the scalars as 0-d tensors on the device)
    makes the same steps as eager Muon, learning rate changing every step, with one compiled graph per
    shape (a tall and a wide one here). On CUDA the orthogonalization runs in bf16 in both."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(64, 16), (64, 16), (16, 64)]
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = [[torch.randn(shape, generator=gen) for shape in shapes] for _ in range(3)]
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    runs = {}
    for compiled in (False, True):
        params = [torch.nn.Parameter(w.clone().to(device)) for w in start]
        optimizer = template.Muon(params, lr=0.02, momentum=0.9, weight_decay=0.1)
        if compiled:
            optimizer.update = torch.compile(template.muon_update, backend=counter, dynamic=False, fullgraph=True)
        for step, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.to(device)
            for group in optimizer.param_groups:
                group["lr"] = 0.02 * (1 - step / 3)
            optimizer.step()
        runs[compiled] = [p.detach().cpu() for p in params]
    assert counter.frame_count == 2  # one graph per shape, none again for a new learning rate
    for eager, compiled in zip(runs[False], runs[True], strict=True):
        assert torch.allclose(eager, compiled, atol=1e-2 if device == "cuda" else 1e-5)


def test_muon_step_is_the_update_per_shape_with_the_aspect_factor(template):
    """Muon.step stacks each shape's matrices and makes the same step as muon_update with the learning rate
    times max(1, rows/cols)^0.5 (tall: 2x here, wide: 1x); a matrix left without a gradient keeps its
    group's state whole; a model cast to bf16 steps and stays bf16."""
    gen = torch.Generator().manual_seed(4)
    tall = [torch.nn.Parameter(torch.randn(64, 16, generator=gen)) for _ in range(2)]
    wide = torch.nn.Parameter(torch.randn(16, 64, generator=gen))
    for p in (*tall, wide):
        p.grad = torch.randn(p.shape, generator=gen)
    expected = {}
    for group, factor, neurons in ((tall, 2.0, (64, 1)), ([wide], 1.0, (1, 64))):
        stacked = torch.stack([p.detach() for p in group])
        template.muon_update(stacked, torch.stack([p.grad for p in group]), torch.zeros_like(stacked),
                             torch.zeros(len(group), *neurons),
                             *scalars(momentum=0.9, lr=0.02 * factor, weight_decay=0.1, beta2=template.NORMUON_BETA2),
                             template.NEWTON_SCHULZ, template.CAUTIOUS_WEIGHT_DECAY)
        expected.update({id(p): row for p, row in zip(group, stacked, strict=True)})
    optimizer = template.Muon([*tall, wide], lr=0.02, momentum=0.9, weight_decay=0.1)
    optimizer.step()
    for p in (*tall, wide):
        assert torch.allclose(p.detach(), expected[id(p)], atol=1e-6)
    tall[1].grad = None
    optimizer.step()
    assert optimizer.state[tall[0]]["momentum"].shape == (2, 64, 16)

    half = [torch.nn.Parameter(torch.randn(32, 8, generator=gen).bfloat16()) for _ in range(2)]
    for p in half:
        p.grad = torch.randn(p.shape, generator=gen).bfloat16()
    before = [p.detach().clone() for p in half]
    template.Muon(half, lr=0.02, momentum=0.9, weight_decay=0.1).step()
    assert all(p.dtype == torch.bfloat16 and not torch.equal(p, b) for p, b in zip(half, before, strict=True))


def test_an_unknown_iteration_name_is_refused(template, monkeypatch):
    monkeypatch.setattr(template, "NEWTON_SCHULZ", "cubic")
    with pytest.raises(ValueError, match="NEWTON_SCHULZ must be one of"):
        template.Muon([torch.nn.Parameter(torch.zeros(4, 4))], lr=0.02, momentum=0.9, weight_decay=0.0)
