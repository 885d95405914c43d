"""The exported model: a graph of allowlisted tensor operators plus plain weights, nothing else.

The train phase writes it (`save`); the eval phase checks it and runs it (`load`). Nothing in it is
unpickled or executed as code: the graph is JSON whose operators are looked up by name in an
allowlist of ATen tensor operators (no file, I/O, random-state, in-place or custom operators), and
the weights are a safetensors file (a JSON header and raw tensor bytes).

    graph.json           {"format": 1, "inputs": [...], "nodes": [...], "output": NAME}
    weights.safetensors  one tensor per lifted parameter, buffer or tensor constant

The graph takes one input, token ids of shape (1, seq_len), so no row of the validation set can see
another; it must not mutate anything (a functional graph: state cannot carry over between calls).
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import warnings
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode

FORMAT = 1
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.safetensors"
MODEL_FILES = (GRAPH_FILE, WEIGHTS_FILE)
MAX_GRAPH_BYTES = 64 << 20
MAX_NODES = 200_000

# Pure tensor math: arithmetic, reductions, linear algebra, normalisation, attention, shapes and views,
# indexing, and constructors whose contents are defined. Not here, on purpose: anything that reads or
# writes files or memory outside its inputs (from_file, as_strided, _reshape_alias, empty*, set_, resize_;
# the attention kernels' own forwards, whose sequence-offset tensors are not bounds-checked on a GPU), draws
# random numbers (rand*, bernoulli, normal, multinomial, ...), works in place (names ending in "_") or prints.
# Views are checked to stay in their tensor's memory (InBounds), kernels that would read past a tensor given
# arguments that disagree are checked for what their arguments must be (ARGUMENT_RULES), and dtypes, layouts and
# memory formats are taken by name only (CONSTANTS).
ALLOWED_OPS = frozenset("""
    abs absolute acos acosh add addbmm addcdiv addcmul addmm addmv addr alias all amax amin any arange
    argmax argmin argsort asin asinh atan atan2 atanh avg_pool1d avg_pool2d baddbmm bitwise_and bitwise_not
    bitwise_or bitwise_xor bmm broadcast_to bucketize cat ceil celu chunk clamp clamp_max clamp_min clip
    clone constant_pad_nd contiguous conv1d conv2d convolution _convolution copysign cos cosh count_nonzero
    cummax cummin cumprod cumsum detach diag diag_embed diagonal div divide dot einsum elu embedding eq erf
    erfc erfinv exp exp2 expand expand_as expm1 eye fill flatten flip floor floor_divide fmax fmin fmod frac
    full full_like gather ge gelu glu group_norm gt hardsigmoid hardswish hardtanh hypot index index_add
    index_copy index_put index_select isfinite isinf isnan layer_norm le leaky_relu lerp lift_fresh_copy
    linalg_vector_norm linear linspace log log10 log1p log2 log_sigmoid log_softmax logaddexp logical_and
    logical_not logical_or logical_xor logit logsumexp lt masked_fill masked_scatter matmul max max_pool1d
    max_pool2d maximum mean min minimum mish mm movedim mul multiply mv nan_to_num narrow native_group_norm
    native_layer_norm ne neg new_full new_ones new_zeros norm one_hot ones ones_like outer permute pow prod
    reciprocal relu relu6 remainder repeat repeat_interleave reshape rms_norm roll round rsqrt rsub
    scalar_tensor scaled_dot_product_attention scatter scatter_add scatter_reduce select select_scatter selu
    sigmoid sign sgn silu sin sinh slice slice_scatter softmax softplus sort split split_with_sizes sqrt square
    squeeze stack std std_mean sub subtract sum swapaxes t take_along_dim tan tanh tensor_split tile topk
    transpose tril triu true_divide trunc type_as unbind unflatten unfold unsqueeze var var_mean view view_as
    where xlogy zeros zeros_like _assert_tensor_metadata _fused_rms_norm _log_softmax
    _native_batch_norm_legit_no_training
    _safe_softmax _scaled_dot_product_cudnn_attention _scaled_dot_product_efficient_attention
    _scaled_dot_product_flash_attention _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_fused_attention_overrideable _softmax _to_copy
    _unsafe_view to __and__ __or__ __xor__ __lshift__ __rshift__
""".split())
# Views whose schema does not say so (no alias annotation on the result), checked as views all the same.
UNMARKED_VIEWS = frozenset({"_unsafe_view"})
# Random only while training: allowed when their `train` argument is the constant False. The attention
# operators are random when their `dropout_p` argument is not 0.
DROPOUTS = frozenset({"dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"})


class Rejected(Exception):
    """The exported model breaks a rule of the eval phase; `check` names the rule."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


# ---------------------------------------------------------------------------- writing (train phase)

def _encode(arg):
    """A node argument as JSON: node references, scalars, lists, dtypes, devices, layouts, formats."""
    if isinstance(arg, torch.fx.Node):
        return {"node": arg.name}
    if isinstance(arg, (list, tuple)):
        return [_encode(a) for a in arg]
    if arg is None or isinstance(arg, (bool, int, str)):
        return arg
    if isinstance(arg, float):
        return arg if math.isfinite(arg) else {"float": repr(arg)}
    for kind in (torch.dtype, torch.layout, torch.memory_format):
        if isinstance(arg, kind):
            return {kind.__name__: str(arg).removeprefix("torch.")}
    if isinstance(arg, torch.device):
        return {"device": arg.type}
    raise TypeError(f"an operator argument of type {type(arg).__name__} cannot be saved")


def _op_name(target) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return repr(target)  # saved as is, so the eval phase can name what it refuses


def save(model: torch.nn.Module, seq_len: int, device: str, out: Path,
         precision: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
    """Export `model` (token ids (1, seq_len) -> logits) as a functional ATen graph and its weights.

    `precision()` is the autocast the model trained and is scored under (bf16 on CUDA). Both traces run
    inside it: the second (the decomposition to functional ops) writes its casts into the graph, and
    outside it would fail on the mixed dtypes the first one recorded.
    """
    from safetensors.torch import save_file
    from torch.export.graph_signature import InputKind

    example = torch.zeros((1, seq_len), dtype=torch.long, device=device)
    with warnings.catch_warnings(), torch.no_grad(), precision():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations, printed on every export
        program = torch.export.export(model, (example,))
        program = program.run_decompositions({})  # functional: in-place ops and buffer writes become explicit
    tensors = {**program.state_dict, **program.constants}
    inputs, weights = [], {}
    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            inputs.append({"name": name, "kind": "tokens"})
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            inputs.append({"name": name, "kind": "weight"})
            weights[name] = tensors[spec.target].detach().to("cpu", copy=True).contiguous()
        else:
            inputs.append({"name": name, "kind": spec.kind.name.lower()})  # refused by the eval phase
    nodes, output = [], None
    for node in program.graph.nodes:
        if node.op == "call_function":
            nodes.append({"name": node.name, "op": _op_name(node.target), "args": _encode(node.args),
                          "kwargs": {key: _encode(value) for key, value in node.kwargs.items()}})
        elif node.op == "output":
            output = _encode(node.args[0])
        elif node.op != "placeholder":
            nodes.append({"name": node.name, "op": f"<{node.op}>", "args": [], "kwargs": {}})
    graph = {"format": FORMAT, "seq_len": seq_len, "inputs": inputs, "nodes": nodes, "output": output,
             "output_kinds": [spec.kind.name.lower() for spec in program.graph_signature.output_specs]}
    (out / GRAPH_FILE).write_text(json.dumps(graph))
    save_file(weights, str(out / WEIGHTS_FILE))


# ---------------------------------------------------------------------------- checking and loading (eval phase)

def resolve_op(name: str):
    """The callable for an operator name, or Rejected when it is not pure tensor math."""
    if name == "getitem":
        return result_item
    namespace, _, rest = name.partition(".")
    opname, _, overload = rest.partition(".")
    if namespace != "aten" or not overload:
        raise Rejected("operator", f"the graph calls {name}, which is not an ATen tensor operator")
    if opname not in ALLOWED_OPS and opname not in DROPOUTS:
        raise Rejected("operator", f"the graph calls aten.{opname}, which is not on the allowlist of tensor "
                                   "operators (no file, I/O, random-state, in-place or custom operators)")
    packet = getattr(torch.ops.aten, opname, None)
    op = getattr(packet, overload, None) if packet is not None else None
    if not isinstance(op, torch._ops.OpOverload) or overload == "out" or op._schema.is_mutable:
        raise Rejected("operator", f"the graph calls {name}, which does not exist or writes to its arguments")
    if overload.startswith("prim_"):  # TorchScript's own overloads (to.prim_dtype): a dtype left unset is read
        raise Rejected("operator", f"the graph calls {name}, an overload for TorchScript, not for tensor graphs")
    return op


# The dtypes, layouts and memory formats a graph may name: dense tensors of plain numbers. Quantized dtypes,
# sparse and mkldnn layouts bring kernels the allowlist was never checked with.
CONSTANTS = {
    "dtype": {name: getattr(torch, name) for name in (
        "float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")},
    "layout": {"strided": torch.strided},
    "memory_format": {name: getattr(torch, name) for name in (
        "contiguous_format", "preserve_format", "channels_last", "channels_last_3d")},
}
# An operator argument of one of these types takes the constant by name, never a number: ATen reads a number
# there as an index into its tables without a bound (a dtype of -1 crashes; a layout of 1 makes a sparse tensor).
CONSTANT_TYPES = {"ScalarType": "dtype", "Layout": "layout", "MemoryFormat": "memory_format"}


def _constant(value, kind: str):
    """A dtype, layout or memory format by name, of those in CONSTANTS."""
    found = CONSTANTS[kind].get(value) if isinstance(value, str) else None
    if found is None:
        raise Rejected("graph", f"unknown {kind} {str(value)[:40]!r}; a graph may use {', '.join(CONSTANTS[kind])}")
    return found


class _Decoder:
    """Turns JSON arguments back into values, node references into fx nodes."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.nodes: dict[str, torch.fx.Node] = {}

    def __call__(self, arg):
        if isinstance(arg, list):
            return [self(a) for a in arg]
        if isinstance(arg, dict):
            if len(arg) != 1:
                raise Rejected("graph", f"malformed argument {str(arg)[:80]}")
            (kind, value), = arg.items()
            if kind == "node":
                if value not in self.nodes:
                    raise Rejected("graph", f"argument refers to {str(value)[:80]!r}, which is not defined before it")
                return self.nodes[value]
            if kind == "float" and value in ("inf", "-inf", "nan"):
                return float(value)
            if kind == "device":
                return self.device  # every tensor the graph makes lives where the eval phase runs it
            if kind in ("dtype", "layout", "memory_format"):
                return _constant(value, kind)
            raise Rejected("graph", f"unknown argument kind {kind!r}")
        if arg is None or isinstance(arg, (bool, int, float, str)):
            return arg
        raise Rejected("graph", f"malformed argument {str(arg)[:80]}")

    def kwargs(self, raw, op) -> dict:
        """Keyword arguments by the names the operator's schema gives them, and no others: torch.fx writes each
        name into the Python source of the module it builds, so any other string would be code run here."""
        if not isinstance(raw, dict):
            raise Rejected("graph", "malformed keyword arguments")
        names = {argument.name for argument in op._schema.arguments} if op is not result_item else set()
        for key in raw:
            if key not in names:
                raise Rejected("graph", f"{op_name(op)} has no keyword argument {str(key)[:40]!r}")
        return {key: self(value) for key, value in raw.items()}


def read_graph(path: Path) -> dict:
    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise Rejected("archive", f"{path.name} is {size:,} bytes, more than {MAX_GRAPH_BYTES:,}")
    try:
        graph = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise Rejected("archive", f"{path.name} is not valid JSON ({str(e)[:100]})") from None
    if not isinstance(graph, dict) or graph.get("format") != FORMAT:
        raise Rejected("archive", f"{path.name} is not a format-{FORMAT} exported graph")
    if not isinstance(graph.get("nodes"), list) or len(graph["nodes"]) > MAX_NODES:
        raise Rejected("archive", f"{path.name} has no node list, or more than {MAX_NODES:,} nodes")
    return graph


def read_weights(path: Path, device: str) -> dict[str, torch.Tensor]:
    """Plain tensors from a safetensors file; anything else is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:  # mapped, not read: a file whose header does not account for its size is refused before its data
        return {name: tensor.to(device) for name, tensor in load_file(path).items()}
    except (SafetensorError, ValueError, TypeError, RuntimeError) as e:
        raise Rejected("archive", f"{path.name} is not a plain safetensors file of tensors ({str(e)[:120]})") from None


def load(directory: Path, device: str, seq_len: int,
         context: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.fx.GraphModule:
    """Check the exported model in `directory` and build it as a module of allowlisted operators; `context`: what
    the eval phase runs it in (autocast)."""
    try:
        module = _build(directory, device, seq_len)
        _refuse_data_sized_results(module, device, seq_len, context)
        return module
    except Rejected:
        raise
    except Exception as e:  # whatever else a crafted archive provokes is the archive's fault
        raise Rejected("archive", f"the exported model cannot be loaded ({type(e).__name__})") from e


def _build(directory: Path, device: str, seq_len: int) -> torch.fx.GraphModule:
    graph = read_graph(directory / GRAPH_FILE)
    weights = read_weights(directory / WEIGHTS_FILE, device)
    if graph.get("seq_len") != seq_len:
        raise Rejected("graph", f"exported for sequence length {graph.get('seq_len')}, not {seq_len}")
    kinds = graph.get("output_kinds")
    if not isinstance(kinds, list) or any(kind != "user_output" for kind in kinds):
        raise Rejected("state", "the model writes to its buffers or inputs: no state may carry over between "
                                "evaluation calls")
    if len(kinds) != 1:
        raise Rejected("graph", f"the model returns {len(kinds)} values, not one tensor of logits")
    inputs = graph.get("inputs")
    if not isinstance(inputs, list) or [i.get("kind") for i in inputs if isinstance(i, dict)].count("tokens") != 1:
        raise Rejected("graph", "the graph must take exactly one input, the token ids")
    fx = torch.fx.Graph()
    decode = _Decoder(device)
    root = torch.nn.Module()
    for number, spec in enumerate(inputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise Rejected("graph", "malformed input list")
        name, kind = spec["name"], spec.get("kind")
        if kind == "tokens":
            decode.nodes[name] = fx.placeholder("tokens")
        elif kind == "weight":
            if name not in weights:
                raise Rejected("archive", f"the weights file has no tensor {name[:80]!r}")
            attr = f"w{number}"
            root.register_buffer(attr, weights[name])
            decode.nodes[name] = fx.get_attr(attr)
        else:
            raise Rejected("graph", f"input {name[:80]!r} is a {str(kind)[:40]}, not a tensor (no custom objects)")
    for raw in graph["nodes"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("op"), str) or not isinstance(raw.get("name"), str):
            raise Rejected("graph", "malformed node")
        op = resolve_op(raw["op"])
        args = decode(raw.get("args", []))
        if not isinstance(args, list):
            raise Rejected("graph", "malformed node arguments")
        kwargs = decode.kwargs(raw.get("kwargs", {}), op)
        if op is not result_item:
            given = named([a.name for a in op._schema.arguments], args, kwargs)
            _refuse_randomness(op, given)
            _refuse_numbered_constants(op, given)
            _refuse_sizes_from_data(op, given)
            if op._opname in ARGUMENT_RULES:
                op = Agreeing(op)
            elif any(ret.alias_info is not None for ret in op._schema.returns) or op._opname in UNMARKED_VIEWS:
                op = InBounds(op)
        decode.nodes[raw["name"]] = fx.call_function(op, tuple(args), kwargs)
    output = decode(graph.get("output"))
    if isinstance(output, list):
        if len(output) != 1:
            raise Rejected("graph", f"the graph returns {len(output)} values, not one tensor of logits")
        output = output[0]
    if not isinstance(output, torch.fx.Node):
        raise Rejected("graph", "the graph returns no tensor")
    fx.output(output)
    return torch.fx.GraphModule(root, fx)


def named(names: list[str], args, kwargs: dict) -> dict:
    """An operator call's arguments by the names its schema gives them (those given; defaults left out)."""
    return {**dict(zip(names, args, strict=False)), **kwargs}


def _refuse_randomness(op, given: dict) -> None:
    """Rejected unless the operator is deterministic as called (`given`: its arguments by name): a dropout with
    train=False, an attention with dropout_p 0 (its default)."""
    names = [a.name for a in op._schema.arguments]
    if op._opname in DROPOUTS and ("train" not in names or given.get("train") is not False):
        raise Rejected("operator", f"aten.{op._opname} is random unless its train argument is False")
    if "dropout_p" in names and given.get("dropout_p", 0.0) != 0:
        raise Rejected("operator", f"aten.{op._opname} is random unless its dropout_p argument is 0")


def _refuse_numbered_constants(op, given: dict) -> None:
    """Rejected unless every dtype, layout and memory format argument is one of CONSTANTS, given by name."""
    for argument in op._schema.arguments:
        kind = CONSTANT_TYPES.get(str(argument.real_type).removeprefix("Optional[").removesuffix("]"))
        if kind is None or argument.name not in given:
            continue
        value = given[argument.name]
        if value is None and str(argument.real_type).startswith("Optional["):
            continue
        if not any(value is allowed for allowed in CONSTANTS[kind].values()):
            raise Rejected("graph", f"aten.{op._opname} takes its {argument.name} by name ({{\"{kind}\": ...}}: "
                                    f"{', '.join(CONSTANTS[kind])}), not {str(value)[:40]!r}")


# Overloads that size their result by a tensor's values (where with a condition alone is nonzero's).
DATA_SIZED = frozenset({"repeat_interleave.Tensor", "repeat_interleave.self_Tensor",
                        "tensor_split.tensor_indices_or_sections", "where.default"})


def _refuse_sizes_from_data(op, given: dict) -> None:
    """Rejected where a size could follow the tokens: a tensor passed for a number (ATen reads a 0-d tensor as
    its value: a size, a length, an end), an overload that sizes its result by a tensor's values, or one_hot left
    to count its classes from its input's largest value. The eval phase's memory and time would then carry
    validation tokens out to trials running beside it, which see both (a red team read tokens from
    /proc/meminfo so). Every number a graph passes is a constant. The size pass (_refuse_data_sized_results)
    then runs the whole graph without data, for whatever else needs a tensor's values for a size."""
    for argument in op._schema.arguments:
        if argument.name in given and _holds_node(given[argument.name]) and not _takes_tensors(argument.type):
            raise Rejected("graph", f"aten.{op._opname} takes its {argument.name} from a tensor; a graph passes "
                                    "numbers as constants, so that no size follows the data")
    if f"{op._opname}.{op._overloadname}" in DATA_SIZED:
        raise Rejected("operator", f"aten.{op._opname}.{op._overloadname} sizes its result by a tensor's values; "
                                   "a graph's sizes may not follow the data")
    classes = given.get("num_classes", -1)
    if op._opname == "one_hot" and not (isinstance(classes, int) and classes > 0):
        raise Rejected("operator", "aten.one_hot without a number of classes counts them from its input's largest "
                                   "value; a graph's sizes may not follow the data")


class _SizePass(torch.fx.Interpreter):
    """The graph's operators themselves (without the rules InBounds and Agreeing add, which read strides that a
    tensor without data may not have as the real one would) on tensors that have sizes and no data."""

    at = "the start"  # the node running, for a pass that cannot go on

    def run_node(self, n: torch.fx.Node):
        self.at = n.name
        return super().run_node(n)

    def call_function(self, target, args, kwargs):
        op = target.op if isinstance(target, (InBounds, Agreeing)) else target
        try:
            return op(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException):
            raise Rejected("operator", f"{op_name(op)} needs a tensor's values to shape its result as the graph "
                                       "calls it; a graph's sizes may not follow the data") from None


def _refuse_data_sized_results(module: torch.fx.GraphModule, device: str, seq_len: int,
                               context: Callable[[], ContextManager]) -> None:
    """Rejected when an operator needs a tensor's values to know the size of its result: the graph runs on an
    input of the eval's shape (one row of seq_len tokens) whose tensors, its weights' too, hold no data, so such
    an operator cannot run. Every size is then known before any token is read, whichever operator the
    rules above did not name. An operator that fails without data for another reason ends the pass (said in
    the log); the real run, under the rules, decides about it. No kernel runs: an operator with no
    implementation for tensors without data ends the pass too, rather than run on zeros outside the rules."""
    size_pass = _SizePass(module)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True, allow_fallback_kernels=False), context(), torch.no_grad():
            size_pass.run(torch.zeros(1, seq_len, dtype=torch.long, device=device))
    except Rejected:
        raise
    except Exception as e:  # not a verdict: the pass cannot go on, and the real run decides
        print(f"size pass: stopped at node {size_pass.at[:80]} ({type(e).__name__}); the rules decide the rest",
              flush=True)


def _takes_tensors(kind) -> bool:
    """Whether a schema type is a tensor, or an optional or a list of them."""
    while isinstance(kind, (torch.OptionalType, torch.ListType)):
        kind = kind.getElementType()
    return isinstance(kind, torch.TensorType)


def _holds_node(value) -> bool:
    return isinstance(value, torch.fx.Node) or (isinstance(value, list) and any(map(_holds_node, value)))


def op_name(op) -> str:
    return "getitem" if op is result_item else f"aten.{op._opname}"


def result_item(results, index: int):
    """getitem as export writes it: one tensor of an operator's tuple of results. On a tensor it would be
    Python indexing, a view made outside the operators this module checks."""
    if not isinstance(results, (tuple, list)) or not isinstance(index, int):
        raise Rejected("graph", "getitem takes one result of an operator's tuple of results, nothing else")
    return results[index]


class InBounds:
    """A view operator that refuses to return a view reaching outside its tensor's memory.

    A view shares its input's memory and reads wherever its sizes and strides point. ATen checks them
    for every view operator on the allowlist, so this should never fire; it is here because one
    unchecked operator (as _reshape_alias was) would let the graph read the eval process's heap, where
    the validation rows lie. It runs on every call: cheap, and it holds should a size ever follow the data
    past _refuse_sizes_from_data and the size pass.
    """

    def __init__(self, op: torch._ops.OpOverload):
        self.op = op
        self.__name__ = self.__qualname__ = f"in_bounds_{op._opname}"  # the name in the module's code

    def __call__(self, *args, **kwargs):
        out = self.op(*args, **kwargs)
        for view in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(view, torch.Tensor) and not within_storage(view):
                raise Rejected("operator", f"aten.{self.op._opname} returned a view outside its tensor's memory")
        return out


def _attention_rule(mask: str | None, grouped_heads: bool | str, public: bool = False) -> Callable[[dict], str | None]:
    """The shapes attention kernels assume: query (..., L, E), key (..., S, E) and value (..., S, Ev) with the same
    leading dims, (batch, heads) for the kernels, which may also take as many query heads as a multiple of the key
    heads where `grouped_heads` (or the argument it names) says so; one dtype and device; a mask or bias
    broadcasting to (..., L, S), of the query's dtype (or bool, for the public operator)."""
    dims = (3, 4) if public else (4,)

    def rule(given: dict) -> str | None:
        q, k, v = given.get("query"), given.get("key"), given.get("value")
        if not all(isinstance(t, torch.Tensor) and t.dim() in dims for t in (q, k, v)) or \
                len({q.dim(), k.dim(), v.dim()}) > 1:
            return f"takes query, key and value of {' or '.join(map(str, dims))} dims alike"
        if len({q.dtype, k.dtype, v.dtype}) > 1 or len({q.device, k.device, v.device}) > 1:
            return "takes query, key and value of one dtype on one device"
        *lead, length, width = q.shape
        *key_lead, keys, key_width = k.shape
        *value_lead, values, _ = v.shape
        grouped = given.get(grouped_heads, False) if isinstance(grouped_heads, str) else grouped_heads
        heads_ok = lead == key_lead or (len(lead) == 2 and grouped and lead[0] == key_lead[0] and key_lead[1] > 0
                                        and lead[1] % key_lead[1] == 0)
        if not (heads_ok and key_lead == value_lead and keys == values and width == key_width) or 0 in (length, keys):
            return (f"got query, key and value of shapes {tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}, "
                    "which do not agree")
        # The CPU kernel reads a row of the last dim as that many consecutive values whatever its stride (a value
        # expanded from one number reads the heap after it), and writes its output, laid out like the query, as
        # if the query's last dim were innermost and its rows apart (else leaving some of it as the allocator
        # left it).
        if not (non_overlapping(q) and all(dense_rows(t) for t in (q, k, v))):
            return "takes a query whose elements do not overlap, and query, key and value rows of consecutive values"
        bias = given.get(mask) if mask else None
        if bias is not None:
            full = (*lead, length, keys)
            if not isinstance(bias, torch.Tensor) or bias.device != q.device or \
                    bias.dtype not in ((q.dtype, torch.bool) if public else (q.dtype,)):
                return f"takes a {mask} of the query's dtype on its device"
            try:
                fits = (public or bias.dim() in (2, 4)) and torch.broadcast_shapes(bias.shape, full) == full
            except RuntimeError:
                fits = False
            if not fits:
                return f"got a {mask} of shape {tuple(bias.shape)} for attention of shape {full}"
        return None
    return rule


def _per_channel(given: dict, names: tuple[str, ...], channels: int) -> str | None:
    """One contiguous value per channel in each of `names` given (kernels read them from their first element on,
    whatever their strides), all of one dtype on the input's device."""
    x = given["input"]
    found = [given[name] for name in names if given.get(name) is not None]
    if not all(isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == channels and t.is_contiguous()
               for t in found):
        return f"needs its {', '.join(names)} as one contiguous value per channel ({channels})"
    if len({t.dtype for t in found}) > 1 or any(t.device != x.device for t in found):
        return f"takes its {', '.join(names)} in one dtype on its input's device"
    return None


def _batch_norm_rule(given: dict) -> str | None:
    """One weight, bias, mean and variance per channel, in the input's dtype or float32 (autocast's)."""
    x = given.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return "takes an input of at least 2 dims"
    problem = _per_channel(given, ("weight", "bias", "running_mean", "running_var"), x.size(1))
    if problem is None and given.get("running_mean") is not None and \
            given["running_mean"].dtype not in (x.dtype, torch.float32):
        problem = "takes its weight, bias, mean and variance in the input's dtype or float32"
    return problem


def _group_norm_rule(given: dict) -> str | None:
    """An input of N x C x HxW elements in groups that divide C, one weight and bias per channel."""
    x, n, c, hxw, groups = (given.get(name) for name in ("input", "N", "C", "HxW", "group"))
    if not isinstance(x, torch.Tensor) or not all(isinstance(v, int) and v > 0 for v in (n, c, hxw, groups)):
        return "takes an input tensor and positive N, C, HxW and group"
    if x.numel() != n * c * hxw or c % groups:
        return f"got an input of {x.numel()} elements for N={n}, C={c}, HxW={hxw} in {groups} groups"
    return _per_channel(given, ("weight", "bias"), c)


def _index_rule(given: dict) -> str | None:
    """Indices, never a mask: a boolean index selects as many elements as it holds True, a size that follows the
    data (see _refuse_sizes_from_data)."""
    if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in given.get("indices") or []):
        return "takes a mask as an index: its result's size would follow the data"
    return None


# Kernels that trust their arguments to agree in shape and read past a tensor's memory when they do not (a
# batch larger in the query than in the key, a key shorter than the value, a bias shorter than the channels or
# expanded from one value): the graph could read the eval process's heap, where the validation rows lie. Each
# rule asks what the operator's own documentation does of its arguments; checked on every call, as InBounds.
# Found by a red team and a fuzzer of every allowed operator (shapes, strides, sizes, dtypes).
ARGUMENT_RULES: dict[str, Callable[[dict], str | None]] = {
    "index": _index_rule,
    "_native_batch_norm_legit_no_training": _batch_norm_rule,
    "native_group_norm": _group_norm_rule,
    "scaled_dot_product_attention": _attention_rule("attn_mask", "enable_gqa", public=True),
    "_scaled_dot_product_flash_attention_for_cpu": _attention_rule("attn_mask", grouped_heads=True),
    "_scaled_dot_product_flash_attention": _attention_rule(None, grouped_heads=True),
    "_scaled_dot_product_efficient_attention": _attention_rule("attn_bias", grouped_heads=False),
    "_scaled_dot_product_cudnn_attention": _attention_rule("attn_bias", grouped_heads=False),
    "_scaled_dot_product_fused_attention_overrideable": _attention_rule("attn_bias", grouped_heads=False),
}
class Agreeing:
    """An operator of ARGUMENT_RULES that refuses, on every call, arguments its kernel does not check."""

    def __init__(self, op: torch._ops.OpOverload):
        self.op = op
        self.rule = ARGUMENT_RULES[op._opname]
        self.names = [argument.name for argument in op._schema.arguments]
        self.__name__ = self.__qualname__ = f"agreeing_{op._opname}"  # the name in the module's code

    def __call__(self, *args, **kwargs):
        problem = self.rule(named(self.names, args, kwargs))
        if problem:
            raise Rejected("operator", f"aten.{self.op._opname} {problem}")
        return self.op(*args, **kwargs)


def dense_rows(t: torch.Tensor) -> bool:
    """Whether the last dim is laid out as consecutive values (stride 1, or a single value)."""
    return t.size(-1) <= 1 or t.stride(-1) == 1


def non_overlapping(t: torch.Tensor) -> bool:
    """Whether no two elements of `t` share memory: taken from the innermost dim out, each dim steps past all
    of the dims inside it (a transpose, or a slice of a wider tensor such as q from a fused qkv, is; an expanded
    or unfolded tensor is not)."""
    reach = 1
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride(), strict=True) if size > 1):
        if stride < reach:
            return False
        reach = stride * size
    return True


def within_storage(view: torch.Tensor) -> bool:
    """Every element the view addresses lies in its storage."""
    if view.numel() == 0:
        return True
    reach = [(size - 1) * stride for size, stride in zip(view.shape, view.stride(), strict=True)]
    lowest = view.storage_offset() + sum(r for r in reach if r < 0)
    highest = view.storage_offset() + sum(r for r in reach if r > 0)
    return lowest >= 0 and (highest + 1) * view.element_size() <= view.untyped_storage().nbytes()
