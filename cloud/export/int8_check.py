"""Is a file all-int8? The one check between the quantizer and a published version.

edgeloop publishes static int8 files only: every compute op takes int8
activations. The only ops left in float are the ones the exporter leaves there
on purpose, at the graph's two ends:

- the **prologue**: the input's cast (uint8 frames) and scaling (MUL, SUB, ADD,
  DIV on the input and constants only: standardization), before the first QUANTIZE;
- the **epilogue**: after the last DEQUANTIZE, the classifier's SOFTMAX and a
  regressor's de-standardization (MUL, ADD, ... on the way to the output only).

``float_by_design`` finds those ops in the float graph (the quantizer's recipe
keeps exactly them in float); ``check_all_int8`` refuses a quantized file in
which any other op computes in float (an op the quantizer has no int8 kernel
for), a heavy op (conv, dense) takes float activations (a dynamic-range file),
or a tensor has a dynamic shape, with the op's name, the torch module it came
from and a hint. The trainer runs it on a freshly built model before any
training, so a model that can never ship is refused at start.
"""

from __future__ import annotations

from cloud.export.errors import NumericCheckError
from cloud.export.graph import Graph, Op
from shared.tflite import HEAVY_OPS

#: Elementwise ops that scale an input or an output (kept in float at the graph's ends).
SCALING_OPS = frozenset({"MUL", "SUB", "ADD", "DIV"})
#: Ops that only change a tensor's shape: a flatten ahead of the input's scaling.
SHAPE_OPS = frozenset({"RESHAPE"})
PROLOGUE_OPS = SCALING_OPS | SHAPE_OPS | {"CAST"}
EPILOGUE_OPS = SCALING_OPS | {"SOFTMAX"}
#: Ops that move between float and int8 (the quantizer's own).
CONVERSIONS = frozenset({"QUANTIZE", "DEQUANTIZE"})
FLOAT_TYPES = frozenset({"float32", "float16", "float64"})

#: Hints by the torch module an op came from, then by op.
MODULE_HINTS = {
    "LSTM": "use conv1d or dense layers",
    "GRU": "use conv1d or dense layers",
    "RNN": "use conv1d or dense layers",
    "LayerNorm": "use batch norm (folded into the layer before it) or standardize inside the first op",
    "GroupNorm": "use batch norm (folded into the layer before it)",
    "MultiheadAttention": "use conv or dense layers",
}
OP_HINTS = {
    "DIV": "divide by a constant (a MUL by its inverse) rather than by a computed value",
    "ABS": "use ReLU (|x| = relu(x) + relu(-x))",
    "CUSTOM": "use builtin layers only",
}
DEFAULT_HINT = (
    "build that part from conv, depthwise conv, dense, pooling and ReLU/sigmoid/tanh layers"
)


class NotInt8(NumericCheckError):
    """The file is not all-int8: an op computes in float, or a shape is dynamic."""


def prologue(graph: Graph) -> set[int]:
    """Ops that only cast or scale the graph's input (on the input and constants alone)."""
    from_input = set(graph.inputs)
    found = set()
    for op in graph.ops:
        if op.name in PROLOGUE_OPS and all(t.index in from_input for t in graph.activations(op)):
            found.add(op.index)
            from_input.update(op.outputs)
    return found


def epilogue(graph: Graph) -> set[int]:
    """Ops whose results reach the graph's outputs only through ops like them
    (a softmax, a de-standardization)."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    found: set[int] = set()
    for op in reversed(graph.ops):
        if op.name not in EPILOGUE_OPS and op.name != "DEQUANTIZE":
            continue
        if all(
            t in outputs or (consumers.get(t) and all(c.index in found for c in consumers[t]))
            for t in op.outputs
        ):
            found.add(op.index)
    return found


def float_by_design(graph: Graph) -> list[Op]:
    """The scaling ops at the graph's ends, which the quantizer leaves in float, and a
    reshape of the input ahead of its scaling (a model that flattens a window and then
    standardizes it): quantized, the raw input would take one int8 scale over columns
    of different units (measured: a regression MLP over [32, 4] sensor windows agreed
    with torch on 20% of inputs, 0.39 degrees a step)."""
    start = prologue(graph)
    ends = start | epilogue(graph)
    scaling = [op for op in graph.ops if op.index in ends and op.name in SCALING_OPS]
    feeds = {t for op in scaling if op.index in start for t in op.inputs}
    shapes = [
        op
        for op in graph.ops
        if op.index in start and op.name in SHAPE_OPS and set(op.outputs) & feeds
    ]
    return sorted(scaling + shapes, key=lambda op: op.index)


def check_all_int8(content: bytes) -> None:
    """Raise NotInt8 unless every compute op of the file takes int8 activations,
    apart from the prologue and epilogue, and every shape is static."""
    graph = Graph.read(content)
    for index, signature in graph.signatures.items():
        if any(d < 0 for d in signature):
            t = graph.tensors[index]
            raise NotInt8(
                f"not all-int8: tensor {t.name!r} has a dynamic shape {list(signature)}: edgeloop needs static "
                "shapes (no sizes computed from the data, e.g. boolean masks or nonzero)"
            )
    heavy = [op for op in graph.ops if op.name in HEAVY_OPS]
    if not heavy:
        raise NotInt8("not all-int8: the model has no conv or dense layer for int8 to compute")
    ends = prologue(graph) | epilogue(graph)
    # heavy ops first: a float or dynamic-range file says so, not its first float reshape
    for op in heavy + graph.ops:
        if op.name in CONVERSIONS or op.index in ends:
            continue
        dtypes = {t.dtype.name for t in graph.activations(op)}
        if dtypes & FLOAT_TYPES:
            raise NotInt8("not all-int8: " + refusal(graph, op))


def refusal(graph: Graph, op: Op) -> str:
    """What is wrong with an op left in float, where it came from, and what to do."""
    module = graph.module_of(op)
    kind = module.split(" ", 1)[0] if module else ""
    where = f" (in {module})" if module else ""
    if op.name in HEAVY_OPS:
        return (
            f"{op.name}{where} takes float activations (a float or dynamic-range model); "
            "edgeloop publishes static int8 files only"
        )
    subject = kind if kind in MODULE_HINTS else op.name
    hint = MODULE_HINTS.get(kind) or OP_HINTS.get(op.name) or DEFAULT_HINT
    return f"{subject} has no int8 kernel: {hint} ({op.name}{where} would run in float)"
