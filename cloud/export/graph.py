"""A TFLite file's graph: every operator with the tensors it reads and writes.

``cloud.export.tflite_file`` reads the constants (weights, biases) to rewrite
them; this module reads the operators around them, for the questions the
exporter asks of a graph: which ops only scale the input or the output (the
quantizer leaves those in float), and which ops compute in float or on a
dynamic shape (a file edgeloop never publishes; ``cloud.export.int8_check``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cloud.export.tflite_file import Tensor, TFLiteFileError, parse_module_name, read_tensor


@dataclass(frozen=True)
class Op:
    """One operator of the graph, in execution order."""

    index: int
    name: str  # the builtin operator: "CONV_2D", "MUL", ...
    inputs: tuple[int, ...]  # tensor indices (optional inputs left out)
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """Subgraph 0 of a model: operators, tensors by index, graph inputs and outputs."""

    ops: list[Op]
    tensors: dict[int, Tensor]
    signatures: dict[int, tuple[int, ...]]  # tensor index -> shape signature (-1: dynamic)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @classmethod
    def read(cls, content: bytes) -> Graph:
        try:
            return _read(content)
        except (IndexError, ValueError, TypeError, AttributeError, struct.error) as e:
            raise TFLiteFileError(f"not a readable TFLite model: {type(e).__name__}: {e}") from e

    def activations(self, op: Op) -> list[Tensor]:
        """The op's inputs that are not constants: what it computes on."""
        return [self.tensors[i] for i in op.inputs if not self.tensors[i].is_constant]

    def consumers(self) -> dict[int, list[Op]]:
        """Tensor index -> the ops that read it."""
        out: dict[int, list[Op]] = {}
        for op in self.ops:
            for i in op.inputs:
                out.setdefault(i, []).append(op)
        return out

    def module_of(self, op: Op) -> str:
        """The torch module an op came from, as the converter named its output
        (``LSTM 'rnn'``), or '' when the name does not say."""
        for i in op.outputs:
            name = self.tensors[i].name
            last = name.split(";", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
            attr = parse_module_name(name)
            if attr and last.endswith("_" + attr):
                return f"{last[: -len(attr) - 1]} {attr!r}"
        return ""


def _read(content: bytes) -> Graph:
    from ai_edge_litert import schema_py_generated as schema

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise TFLiteFileError("not a TFLite model (no TFL3 identifier)")
    model = schema.Model.GetRootAs(content, 0)
    if model.SubgraphsLength() != 1:
        raise TFLiteFileError(f"expected one subgraph, found {model.SubgraphsLength()}")
    sg = model.Subgraphs(0)
    tensors, signatures = {}, {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        tensors[i] = read_tensor(i, t, model)
        if t.ShapeSignatureLength():
            signatures[i] = tuple(int(d) for d in t.ShapeSignatureAsNumpy())
    names = {
        getattr(schema.BuiltinOperator, n): n for n in dir(schema.BuiltinOperator) if n.isupper()
    }
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        inputs = tuple(int(v) for v in op.InputsAsNumpy() if v >= 0) if op.InputsLength() else ()
        outputs = tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        ops.append(Op(i, name, inputs, outputs))
    graph_in = tuple(int(v) for v in sg.InputsAsNumpy()) if sg.InputsLength() else ()
    graph_out = tuple(int(v) for v in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    return Graph(ops, tensors, signatures, graph_in, graph_out)
