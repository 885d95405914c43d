"""The exported-model format: what the eval phase loads, and everything it refuses to load."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from agent.constants import render_constants
from agent.presets import get_preset
from agent.template import template_dir
from sandbox.phases import copy_model
from tests.conftest import import_file
from train_template import exported
from train_template.exported import Rejected

SEQ = 256
VOCAB = 2048


def template_model(tmp_path):
    path = tmp_path / "train_cpu.py"
    path.write_text(render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants))
    module = import_file("train_cpu_export", path)
    torch.manual_seed(0)
    model = module.GPT(module.build_config(VOCAB, SEQ))
    model.init_weights()
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The template's model, exported once: (directory, logits of the eager model on fixed tokens)."""
    tmp = tmp_path_factory.mktemp("exported")
    model = template_model(tmp)
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)  # make the logits differ by token
    out = tmp / "model"
    out.mkdir()
    exported.save(model, SEQ, "cpu", out)
    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return out, tokens, model(tokens)


def edited(saved_dir, tmp_path, edit):
    """A copy of the saved model whose graph JSON went through `edit` (in place)."""
    target = tmp_path / "edited"
    target.mkdir(parents=True)
    graph = json.loads((saved_dir / exported.GRAPH_FILE).read_text())
    edit(graph)
    (target / exported.GRAPH_FILE).write_text(json.dumps(graph))
    (target / exported.WEIGHTS_FILE).write_bytes((saved_dir / exported.WEIGHTS_FILE).read_bytes())
    return target


def test_the_template_round_trips_exactly(saved):
    directory, tokens, expected = saved
    model = exported.load(directory, "cpu", SEQ)
    with torch.no_grad():
        logits = model(tokens)
    assert torch.equal(logits, expected)
    assert sum(t.numel() for t in model.buffers()) > 1_000_000
    assert not list(model.parameters())  # plain tensors: nothing to train, nothing to pickle


def test_a_model_trained_under_autocast_is_scored_as_it_ran(tmp_path):
    """bf16 autocast, as on CUDA (here the CPU's): the export keeps its casts and scores like the model."""
    model = template_model(tmp_path)
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=0.05)

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    exported.save(model, SEQ, "cpu", tmp_path, bf16)
    loaded = exported.load(tmp_path, "cpu", SEQ)
    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), bf16():
        assert torch.equal(loaded(tokens), model(tokens))


def replace_first_op(name: str, args=None):
    def edit(graph):
        node = next(n for n in graph["nodes"] if n["op"].startswith("aten.linear"))
        node["op"] = name
        if args is not None:
            node["args"], node["kwargs"] = args, {}
    return edit


@pytest.mark.parametrize("op, check", [
    ("aten.from_file.default", "operator"),        # reads a file
    ("aten.add_.Tensor", "operator"),              # in place
    ("aten.rand.default", "operator"),             # random state
    ("aten.empty.memory_format", "operator"),      # uninitialised memory
    ("aten.as_strided.default", "operator"),       # reads outside its input
    ("aten._reshape_alias.default", "operator"),   # the same, unchecked
    ("aten._flash_attention_forward.default", "operator"),  # sequence offsets unchecked on a GPU
    ("aten.add.out", "operator"),                  # writes into an argument
    ("aten._print.default", "operator"),           # I/O
    ("mylib.read_validation.default", "operator"),  # a custom operator
    ("torch.load", "operator"),
    ("<call_module>", "operator"),
])
def test_operators_off_the_allowlist_are_refused(saved, tmp_path, op, check):
    with pytest.raises(Rejected) as info:
        exported.load(edited(saved[0], tmp_path, replace_first_op(op)), "cpu", SEQ)
    assert info.value.check == check


def test_dropout_only_when_off(saved, tmp_path):
    def dropout(train: bool):
        def edit(graph):
            node = next(n for n in graph["nodes"] if n["op"].startswith("aten.linear"))
            first = node["name"]
            graph["nodes"].insert(graph["nodes"].index(node) + 1, {
                "name": "drop", "op": "aten.dropout.default", "args": [{"node": first}, 0.5, train], "kwargs": {}})
            for other in graph["nodes"][graph["nodes"].index(node) + 2:]:
                other["args"] = json.loads(json.dumps(other["args"]).replace(f'{{"node": "{first}"}}',
                                                                             '{"node": "drop"}'))
        return edit
    with pytest.raises(Rejected, match="random unless its train argument is False"):
        exported.load(edited(saved[0], tmp_path / "on", dropout(True)), "cpu", SEQ)
    model = exported.load(edited(saved[0], tmp_path / "off", dropout(False)), "cpu", SEQ)
    with torch.no_grad():
        assert torch.equal(model(saved[1]), saved[2])


def sdpa_with(**kwargs):
    def edit(graph):
        next(n for n in graph["nodes"] if "scaled_dot_product" in n["op"])["kwargs"].update(kwargs)
    return edit


def test_attention_only_without_dropout(saved, tmp_path):
    with pytest.raises(Rejected, match="random unless its dropout_p argument is 0"):
        exported.load(edited(saved[0], tmp_path / "on", sdpa_with(dropout_p=0.1)), "cpu", SEQ)
    model = exported.load(edited(saved[0], tmp_path / "off", sdpa_with(dropout_p=0.0)), "cpu", SEQ)
    with torch.no_grad():
        assert torch.equal(model(saved[1]), saved[2])


def test_every_view_is_checked_to_stay_in_its_tensors_memory(saved):
    model = exported.load(saved[0], "cpu", SEQ)
    views = [node.target for node in model.graph.nodes if isinstance(node.target, exported.InBounds)]
    assert {view.op._opname for view in views} >= {"view", "transpose", "slice", "split"}
    unchecked = [node.target for node in model.graph.nodes if isinstance(node.target, torch._ops.OpOverload)
                 and any(ret.alias_info is not None for ret in node.target._schema.returns)]
    assert unchecked == []


def with_node(op: str, args: list, kwargs: dict | None = None):
    """An edit that adds a node (used by nothing) on the token input: the graph still runs it."""
    def edit(graph):
        tokens = next(i["name"] for i in graph["inputs"] if i["kind"] == "tokens")
        graph["nodes"].insert(0, {"name": "extra", "op": op, "args": [{"node": tokens}, *args],
                                  "kwargs": kwargs or {}})
    return edit


def test_getitem_takes_only_a_result_of_a_tuple(saved, tmp_path):
    """On a tensor, getitem would be Python indexing: a view made past the checks. Refused as the size pass
    runs the graph, at load."""
    with pytest.raises(Rejected, match="getitem takes one result"):
        exported.load(edited(saved[0], tmp_path, with_node("getitem", [0])), "cpu", SEQ)


CODE_AS_A_NAME = "alpha = 1) if print('the graph ran code') else torch.ops.aten.add.Tensor(tokens, 0, alpha"


@pytest.mark.parametrize("op, kwargs", [
    ("aten.add.Tensor", {CODE_AS_A_NAME: 1}),  # torch.fx writes keyword names into the module's Python source
    ("aten.add.Tensor", {"alpha": 1, "beta": 2}),
    ("getitem", {"index": 0}),
])
def test_keyword_arguments_are_only_those_the_operator_has(saved, tmp_path, op, kwargs, capsys):
    def edit(graph):
        with_node(op, [0])(graph)
        graph["nodes"][0]["kwargs"] = kwargs
    with pytest.raises(Rejected, match="has no keyword argument") as info:
        exported.load(edited(saved[0], tmp_path, edit), "cpu", SEQ)
    assert info.value.check == "graph" and "the graph ran code" not in capsys.readouterr().out


def test_a_keyword_argument_the_operator_has_is_kept(saved, tmp_path):
    def edit(graph):
        with_node("aten.add.Tensor", [0])(graph)
        graph["nodes"][0]["kwargs"] = {"alpha": 2}
    model = exported.load(edited(saved[0], tmp_path, edit), "cpu", SEQ)
    assert any(node.kwargs == {"alpha": 2} for node in model.graph.nodes)


def test_a_view_whose_schema_does_not_say_so_is_checked_too(saved, tmp_path):
    model = exported.load(edited(saved[0], tmp_path, with_node("aten._unsafe_view.default", [[SEQ]])), "cpu", SEQ)
    assert any(isinstance(node.target, exported.InBounds) and node.target.op._opname == "_unsafe_view"
               for node in model.graph.nodes)
    with torch.no_grad():
        assert torch.equal(model(saved[1]), saved[2])


def test_a_view_reaching_outside_its_memory_is_refused():
    """The guard itself, on an operator that does not check its strides (and is not on the allowlist)."""
    reshape_alias = exported.InBounds(torch.ops.aten._reshape_alias.default)
    tokens = torch.arange(8)
    assert torch.equal(reshape_alias(tokens, [2, 4], [4, 1]), tokens.view(2, 4))
    with pytest.raises(Rejected, match="outside its tensor's memory"):
        reshape_alias(tokens, [64], [1])
    with pytest.raises(Rejected, match="outside its tensor's memory"):
        reshape_alias(tokens[2:], [7], [1])  # within the storage's bytes only from an offset it does not have
    inside = [tokens.view(2, 4).t(), tokens[3:5], tokens.expand(3, 8), tokens[:0], tokens.view(2, 4)[:, 1::2]]
    assert all(exported.within_storage(view) for view in inside)


class NormedAttention(torch.nn.Module):
    """Batch norm and attention, as an agent might write them: export keeps the batch norm's own kernel."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.norm = torch.nn.BatchNorm1d(SEQ)  # positions as channels: a transpose here would meet an export bug
                                                # (its graph views the norm's output as if it were contiguous)

    def forward(self, idx):
        q = self.norm(self.embed(idx)).view(1, SEQ, 2, 8).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return y.transpose(1, 2).reshape(1, SEQ, 16) @ self.embed.weight.t()


def test_kernels_that_trust_their_shapes_are_checked_and_score_as_they_ran(tmp_path):
    model = NormedAttention()
    with torch.no_grad():
        model.norm.running_mean.normal_()
        model.norm.running_var.uniform_(0.5, 2.0)
    model.eval()
    exported.save(model, SEQ, "cpu", tmp_path)
    loaded = exported.load(tmp_path, "cpu", SEQ)
    assert [node.target.op._opname for node in loaded.graph.nodes if isinstance(node.target, exported.Agreeing)] \
        == ["_native_batch_norm_legit_no_training", "scaled_dot_product_attention"]
    tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def floats(shape, value=None):
    """Graph nodes for a float tensor of `shape` made from the token input ("x") or filled with `value`."""
    if value is not None:
        return {"op": "aten.full.default", "args": [shape, value], "kwargs": {"dtype": {"dtype": "float32"}}}
    return {"op": "aten.view.default", "args": [{"node": "x"}, shape], "kwargs": {}}


# What the red team's graph did to read the eval process's heap: a bias shorter than the channels makes the batch
# norm kernel copy the memory after it; a query batch larger than the key's makes the CPU attention kernel read
# keys and values past their memory.
HEAP_READS = {
    "batch norm, short bias": [
        ("short", floats([2], 0.0)), ("mean", floats([SEQ], 0.0)), ("var", floats([SEQ], 1.0)),
        ("input", floats([1, SEQ, 1])),
        ("read", {"op": "aten._native_batch_norm_legit_no_training.default",
                  "args": [{"node": "input"}, None, {"node": "short"}, {"node": "mean"}, {"node": "var"}, 0.1, 0.0],
                  "kwargs": {}})],
    "attention, query batch past the key's": [
        ("q", floats([2, 1, SEQ // 4, 2])), ("kv", floats([1, 1, SEQ // 2, 2])),
        ("read", {"op": "aten._scaled_dot_product_flash_attention_for_cpu.default",
                  "args": [{"node": "q"}, {"node": "kv"}, {"node": "kv"}, 0.0, False], "kwargs": {}})],
}


@pytest.mark.parametrize("attack", sorted(HEAP_READS))
def test_a_kernel_given_shapes_that_would_read_past_its_tensors_is_refused(saved, tmp_path, attack):
    def edit(graph):
        tokens = next(i["name"] for i in graph["inputs"] if i["kind"] == "tokens")
        nodes = [{"name": "x", "op": "aten._to_copy.default", "args": [{"node": tokens}],
                  "kwargs": {"dtype": {"dtype": "float32"}}}]
        nodes += [{"name": name, **node} for name, node in HEAP_READS[attack]]
        graph["nodes"][:0] = nodes

    model = exported.load(edited(saved[0], tmp_path, edit), "cpu", SEQ)
    with pytest.raises(Rejected) as info, torch.no_grad():
        model(saved[1])
    assert info.value.check == "operator"


ATTENTION = torch.ops.aten


@pytest.mark.parametrize("op, q, kv, mask, refused", [
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 16), None, None),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 2, 8, 16), None, None),  # grouped heads
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 16), (8, 8), None),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 8), None),
    ("_scaled_dot_product_flash_attention_for_cpu", (2, 4, 8, 16), (1, 4, 8, 16), None, "do not agree"),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 2, 8, 16), (1, 4, 8, 16), None, "do not agree"),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 8), None, "do not agree"),
    ("_scaled_dot_product_flash_attention_for_cpu", (4, 8, 16), (4, 8, 16), None, "of 4 dims"),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 4, 8), "attn_mask"),
    ("_scaled_dot_product_flash_attention_for_cpu", (1, 4, 8, 16), (1, 4, 8, 16), (2, 4, 8, 8), "attn_mask"),
    ("_scaled_dot_product_efficient_attention", (1, 4, 8, 16), (1, 2, 8, 16), None, "do not agree"),
])
def test_attention_kernels_take_only_shapes_that_agree(op, q, kv, mask, refused):
    guarded = exported.Agreeing(getattr(ATTENTION, op).default)
    query, key = torch.randn(q), torch.randn(kv)
    given = {"query": query, "key": key, "value": key.clone()}
    if mask is not None:
        given["attn_mask" if "cpu" in op else "attn_bias"] = torch.zeros(mask)
    problem = guarded.rule(given)
    assert (problem is None) if refused is None else (refused in problem), problem
    if refused is None:  # what passes runs, and as the public operator computes it
        heads = q[1] // kv[1]
        key = key.repeat_interleave(heads, 1)
        expected = torch.nn.functional.scaled_dot_product_attention(query, key, key, attn_mask=given.get("attn_mask"))
        out = guarded(query, given["key"], given["value"], 0.0, False, attn_mask=given.get("attn_mask"))[0]
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


SDPA = exported.Agreeing(ATTENTION.scaled_dot_product_attention.default)


@pytest.mark.parametrize("q, k, v, extra, refused", [
    ((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16), {}, None),
    ((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 32), {}, None),                         # a wider value
    ((3, 8, 16), (3, 5, 16), (3, 5, 16), {}, None),                                  # no heads dim
    ((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16), {"enable_gqa": True}, None),
    ((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16), {"attn_mask": torch.ones(8, 8, dtype=torch.bool)}, None),
    ((1, 4, 8, 16), (1, 4, 1, 16), (1, 4, 8, 16), {}, "do not agree"),              # a key shorter than the value
    ((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16), {}, "do not agree"),              # grouped, not asked for
    ((2, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16), {}, "do not agree"),              # batch broadcast
    ((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16), {"attn_mask": torch.ones(8, 4)}, "attn_mask"),
])
def test_the_public_attention_takes_only_shapes_that_agree(q, k, v, extra, refused):
    given = {"query": torch.randn(q), "key": torch.randn(k), "value": torch.randn(v), **extra}
    problem = SDPA.rule(given)
    assert (problem is None) if refused is None else (refused in problem), problem
    if refused is None:
        SDPA(given.pop("query"), given.pop("key"), given.pop("value"), **given)
    else:
        with pytest.raises(Rejected, match=refused):
            SDPA(given.pop("query"), given.pop("key"), given.pop("value"), **given)


def fused_qkv(heads=4, width=16):
    """q, k and v as a GPT splits them out of one projection: views with gaps, each row's values consecutive."""
    qkv = torch.randn(1, 8, 3 * heads * width)
    return [t.view(1, 8, heads, width).transpose(1, 2) for t in qkv.split(heads * width, dim=2)]


def layouts():
    q, k, v = fused_qkv()
    one = torch.zeros(1, 1, 1, 1)
    return {
        "fused qkv": ((q, k, v), None),
        "a value expanded from one number": ((q, k, one.expand(1, 4, 8, 16)), "consecutive values"),
        "a query whose last dim is not innermost": ((q.transpose(2, 3).contiguous().transpose(2, 3), k, v),
                                                    "consecutive values"),
        "a query of overlapping rows": ((torch.zeros(64).unfold(0, 16, 4)[None, None, :8].expand(1, 4, 8, 16), k, v),
                                        "do not overlap"),
        "no keys": ((q, k[:, :, :0], v[:, :, :0]), "do not agree"),
    }


@pytest.mark.parametrize("case", sorted(layouts()))
@pytest.mark.parametrize("op", ["scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"])
def test_attention_takes_only_layouts_its_cpu_kernel_reads_and_writes_within(case, op):
    """The fuzzer's three: a value expanded along its last dim let the kernel read the heap past its one number;
    a query whose last dim is not innermost, or whose rows overlap, left output the kernel never wrote (the
    allocator's leftovers, freed tensors included); no keys at all divided by zero."""
    (q, k, v), refused = layouts()[case]
    guarded = exported.Agreeing(getattr(ATTENTION, op).default)
    problem = guarded.rule({"query": q, "key": k, "value": v})
    assert (problem is None) if refused is None else (refused in problem), problem
    if refused is None:
        out = guarded(q, k, v) if op == "scaled_dot_product_attention" else guarded(q, k, v, 0.0, False)[0]
        expected = torch.nn.functional.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_norm_kernels_take_one_contiguous_value_per_channel():
    """An expanded bias (stride 0, one value) passes a shape check, and the group norm kernel reads it as C
    values from its first on: C - 1 of them past its memory."""
    group_norm = exported.Agreeing(ATTENTION.native_group_norm.default)
    batch_norm = exported.Agreeing(ATTENTION._native_batch_norm_legit_no_training.default)
    x, ones = torch.zeros(1, 64, 1), torch.ones(64)
    expanded = torch.zeros(1).expand(64)
    torch.testing.assert_close(group_norm(x, ones, torch.zeros(64), 1, 64, 1, 4, 1e-5)[0], x)
    for bias, problem in ((expanded, "contiguous"), (torch.zeros(63), "per channel")):
        with pytest.raises(Rejected, match=problem):
            group_norm(x, ones, bias, 1, 64, 1, 4, 1e-5)
        with pytest.raises(Rejected, match=problem):
            batch_norm(x, ones, bias, torch.zeros(64), ones, 0.1, 1e-5)
    with pytest.raises(Rejected, match="elements for N=1, C=64, HxW=2"):
        group_norm(x, ones, torch.zeros(64), 1, 64, 2, 4, 1e-5)


@pytest.mark.parametrize("op, args, kwargs, problem", [
    ("aten._to_copy.default", [], {"dtype": -1}, "takes its dtype by name"),           # crashed the process
    ("aten._to_copy.default", [], {"memory_format": 4}, "takes its memory_format by name"),
    ("aten.zeros_like.default", [], {"layout": 1}, "takes its layout by name"),        # a sparse tensor
    ("aten.view.dtype", [46], {}, "takes its dtype by name"),
    ("aten._to_copy.default", [], {"dtype": {"dtype": "qint8"}}, "unknown dtype 'qint8'"),
    ("aten.to.prim_dtype", [None, False, True], {}, "an overload for TorchScript"),    # reads a dtype left unset
])
def test_constants_are_named_and_plain(saved, tmp_path, op, args, kwargs, problem):
    with pytest.raises(Rejected, match=problem):
        exported.load(edited(saved[0], tmp_path, with_node(op, args, kwargs)), "cpu", SEQ)


def with_nodes(*nodes: tuple[str, list]):
    """An edit that adds nodes (used by nothing) before the graph's own: `first` is the first token (a 0-d
    tensor), `above` a mask of the tokens, and each (op, args) after them is named extra0, extra1, ..."""
    def edit(graph):
        tokens = next(i["name"] for i in graph["inputs"] if i["kind"] == "tokens")
        added = [{"name": "row", "op": "aten.select.int", "args": [{"node": tokens}, 0, 0]},
                 {"name": "first", "op": "aten.select.int", "args": [{"node": "row"}, 0, 0]},
                 {"name": "above", "op": "aten.gt.Scalar", "args": [{"node": tokens}, 100]}]
        added += [{"name": f"extra{i}", "op": op, "args": args} for i, (op, args) in enumerate(nodes)]
        graph["nodes"][:0] = added
    return edit


@pytest.mark.parametrize("nodes, problem", [
    ([("aten.ones.default", [[{"node": "first"}, 65536]])], "aten.ones takes its size from a tensor"),
    ([("aten.arange.default", [{"node": "first"}])], "aten.arange takes its end from a tensor"),
    ([("aten.narrow.default", [{"node": "row"}, 0, 0, {"node": "first"}])], "aten.narrow takes its length from"),
    ([("aten.repeat_interleave.Tensor", [{"node": "row"}])], "sizes its result by a tensor's values"),
    ([("aten.where.default", [{"node": "above"}])], "aten.where.default sizes its result by a tensor's values"),
    ([("aten.one_hot.default", [{"node": "row"}])], "aten.one_hot without a number of classes"),
    ([("aten.one_hot.default", [{"node": "row"}, -1])], "aten.one_hot without a number of classes"),
    # no rule names it: the size pass, which runs the graph on tensors without data, finds it
    ([("aten.index.Tensor", [{"node": "row"}, [{"node": "above"}]])], "aten.index needs a tensor's values"),
])
def test_no_size_follows_the_tokens(saved, tmp_path, nodes, problem):
    """Memory and time that follow the tokens would carry them out of the eval phase to a trial running beside
    it (a red team read them from the host's /proc/meminfo): every size a graph makes is a constant."""
    with pytest.raises(Rejected, match=problem):
        exported.load(edited(saved[0], tmp_path, with_nodes(*nodes)), "cpu", SEQ)


def test_the_size_pass_runs_the_template_to_its_end(saved, capsys):
    """The pass that finds sizes following the data (run on tensors without data) checks every operator of an
    honest graph: none stops it before the logits."""
    exported.load(saved[0], "cpu", SEQ)
    assert "size pass" not in capsys.readouterr().out


def test_a_mask_is_no_index():
    """A boolean index selects as many elements as it holds True; beside the size pass, the rule refuses one
    whenever the graph runs."""
    guarded = exported.Agreeing(torch.ops.aten.index.Tensor)
    tokens = torch.arange(8)
    with pytest.raises(Rejected, match="aten.index takes a mask as an index"):
        guarded(tokens, [tokens > 3])
    assert guarded(tokens, [tokens[:2]]).tolist() == [0, 1]


def test_a_mask_of_another_dtype_is_refused():
    guarded = exported.Agreeing(ATTENTION._scaled_dot_product_flash_attention_for_cpu.default)
    q = torch.randn(1, 2, 8, 16)
    assert "dtype" in guarded.rule({"query": q, "key": q, "value": q, "attn_mask": torch.ones(8, 8, dtype=torch.bool)})
    assert "dtype" in guarded.rule({"query": q, "key": q.double(), "value": q})


@pytest.mark.parametrize("edit, check", [
    (lambda g: g.update(output_kinds=["user_output", "buffer_mutation"]), "state"),
    (lambda g: g["inputs"].append({"name": "obj", "kind": "custom_obj"}), "graph"),
    (lambda g: g["nodes"][0].update(args=[{"node": "defined_later"}]), "graph"),
    (lambda g: g["nodes"][0].update(kwargs={"dtype": {"dtype": "load"}}), "graph"),
    (lambda g: g.update(seq_len=512), "graph"),
    (lambda g: g.update(output=[{"node": g["nodes"][0]["name"]}, {"node": g["nodes"][1]["name"]}]), "graph"),
])
def test_malformed_graphs_are_refused(saved, tmp_path, edit, check):
    with pytest.raises(Rejected) as info:
        exported.load(edited(saved[0], tmp_path, edit), "cpu", SEQ)
    assert info.value.check == check


def test_hostile_json_is_refused_without_a_crash(saved, tmp_path):
    target = tmp_path / "deep"
    target.mkdir()
    (target / exported.GRAPH_FILE).write_text('{"format": 1, "nodes": ' + "[" * 100_000)
    (target / exported.WEIGHTS_FILE).write_bytes((saved[0] / exported.WEIGHTS_FILE).read_bytes())
    with pytest.raises(Rejected) as info:
        exported.load(target, "cpu", SEQ)
    assert info.value.check == "archive"


def test_a_pickled_weights_file_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    target = tmp_path / "pickled"
    target.mkdir()
    (target / exported.GRAPH_FILE).write_bytes((saved[0] / exported.GRAPH_FILE).read_bytes())
    torch.save({"weights": Payload()}, target / exported.WEIGHTS_FILE)
    with pytest.raises(Rejected) as info:
        exported.load(target, "cpu", SEQ)
    assert info.value.check == "archive" and not marker.exists()


def test_a_sparse_weights_file_costs_the_host_nothing(saved, tmp_path):
    """3 GiB stated, a few KB on disk: carried to the eval phase as a link, refused there from its header."""
    out, into = tmp_path / "out", tmp_path / "in"
    shutil.copytree(saved[0], out)
    into.mkdir()
    with open(out / exported.WEIGHTS_FILE, "r+b") as f:
        f.truncate(3 << 30)
    copy_model(out, into)
    assert (into / exported.WEIGHTS_FILE).stat().st_ino == (out / exported.WEIGHTS_FILE).stat().st_ino
    assert (into / exported.WEIGHTS_FILE).stat().st_blocks * 512 < 1 << 30  # no hole written out
    with pytest.raises(Rejected, match="not fully covered"):
        exported.load(into, "cpu", SEQ)


def test_only_regular_files_are_carried(saved, tmp_path):
    out, into = tmp_path / "out", tmp_path / "in"
    shutil.copytree(saved[0], out)
    into.mkdir()
    (out / exported.GRAPH_FILE).unlink()
    (out / exported.GRAPH_FILE).symlink_to("/etc/passwd")
    with pytest.raises(OSError):
        copy_model(out, into)


def test_a_model_that_keeps_state_between_calls_is_refused(tmp_path):
    class Memory(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, VOCAB)
            self.register_buffer("seen", torch.zeros(VOCAB))

        def forward(self, idx):
            self.seen.add_(torch.nn.functional.one_hot(idx, VOCAB).float().sum((0, 1)))  # remembers past rows
            return self.embed(idx) + self.seen

    exported.save(Memory().eval(), SEQ, "cpu", tmp_path)
    with pytest.raises(Rejected) as info:
        exported.load(tmp_path, "cpu", SEQ)
    assert info.value.check == "state"
