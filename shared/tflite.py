"""TFLite file helpers that need only the standard library.

tflite-runtime 2.14 builds an interpreter from bytes without verifying the
flatbuffer, so a truncated or garbled file can crash the process instead of
raising. ``check_flatbuffer`` walks every table and vector the interpreter
follows at load time and refuses the file when any offset points outside it.
Field ids are those of the TFLite schema (schema.fbs).
"""

from __future__ import annotations

#: The compute-heavy ops: each takes a weight tensor as its second input (a bias as
#: its third, if any), and in a model the edge accepts each must run in int8. The
#: edge's check (``TFLiteModel.heavy_ops_int8``), the exporter's and the per-layer
#: views of a file (``cloud.export.tflite_file``, ``cloud.evaluation.layer_diff``)
#: all use this one set.
HEAVY_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)

_MODEL_OPCODES, _MODEL_SUBGRAPHS, _MODEL_BUFFERS = 1, 2, 4
_SG_TENSORS, _SG_INPUTS, _SG_OUTPUTS, _SG_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_BUFFER, _TENSOR_QUANT = 0, 2, 4
_OP_OPCODE, _OP_INPUTS, _OP_OUTPUTS, _OP_OPTIONS = 0, 1, 2, 4
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class FlatbufferError(ValueError):
    """The bytes are not a well-formed TFLite flatbuffer."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)

    def _at(self, pos: int, size: int) -> int:
        if pos < 0 or pos + size > self.n:
            raise FlatbufferError(f"offset {pos} (+{size}) is outside the {self.n}-byte file")
        return pos

    def u32(self, pos: int) -> int:
        return int.from_bytes(self.data[self._at(pos, 4) : pos + 4], "little")

    def i32(self, pos: int) -> int:
        return int.from_bytes(self.data[self._at(pos, 4) : pos + 4], "little", signed=True)

    def u16(self, pos: int) -> int:
        return int.from_bytes(self.data[self._at(pos, 2) : pos + 2], "little")

    def field(self, table: int, field_id: int) -> int | None:
        """Position of a field's value in ``table``, or None when absent."""
        vtable = self._at(table - self.i32(table), 4)
        vt_size = self.u16(vtable)
        slot = 4 + 2 * field_id
        if slot + 2 > vt_size:
            return None
        offset = self.u16(vtable + slot)
        return self._at(table + offset, 1) if offset else None

    def ref(self, table: int, field_id: int) -> int | None:
        """Target of an offset field (a table, vector or string), or None."""
        pos = self.field(table, field_id)
        return None if pos is None else self._at(pos + self.u32(pos), 4)

    def vector(self, pos: int | None, elem_size: int) -> tuple[int, int]:
        """(first element position, length) of a vector, bounds-checked."""
        if pos is None:
            return 0, 0
        length = self.u32(pos)
        self._at(pos + 4, length * elem_size)
        return pos + 4, length

    def tables(self, pos: int | None) -> list[int]:
        start, length = self.vector(pos, 4)
        return [self._at(start + 4 * i + self.u32(start + 4 * i), 4) for i in range(length)]

    def ints(self, pos: int | None) -> list[int]:
        start, length = self.vector(pos, 4)
        return [self.i32(start + 4 * i) for i in range(length)]


def check_flatbuffer(data: bytes) -> None:
    """Raise FlatbufferError unless ``data`` is a structurally sound TFLite model.

    >>> check_flatbuffer(b"not a model")
    Traceback (most recent call last):
    ...
    shared.tflite.FlatbufferError: not a TFLite flatbuffer (no TFL3 identifier)
    """
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise FlatbufferError("not a TFLite flatbuffer (no TFL3 identifier)")
    r = _Reader(data)
    model = r._at(r.u32(0), 4)
    opcodes = r.tables(r.ref(model, _MODEL_OPCODES))
    buffers = r.tables(r.ref(model, _MODEL_BUFFERS))
    for buf in buffers:
        r.vector(r.ref(buf, _BUFFER_DATA), 1)
        offset_pos, size_pos = r.field(buf, _BUFFER_OFFSET), r.field(buf, _BUFFER_SIZE)
        if offset_pos is not None and size_pos is not None:
            start = int.from_bytes(data[r._at(offset_pos, 8) : offset_pos + 8], "little")
            size = int.from_bytes(data[r._at(size_pos, 8) : size_pos + 8], "little")
            if start > 1:  # 0/1 mean "no external data"
                r._at(start, size)
    subgraphs = r.tables(r.ref(model, _MODEL_SUBGRAPHS))
    if not subgraphs:
        raise FlatbufferError("the model has no subgraph")
    for sg in subgraphs:
        _check_subgraph(r, sg, len(opcodes), len(buffers))


def _check_subgraph(r: _Reader, sg: int, n_opcodes: int, n_buffers: int) -> None:
    tensors = r.tables(r.ref(sg, _SG_TENSORS))
    for t in tensors:
        r.ints(r.ref(t, _TENSOR_SHAPE))
        buf = r.field(t, _TENSOR_BUFFER)
        if buf is not None and not 0 <= r.u32(buf) < max(n_buffers, 1):
            raise FlatbufferError("a tensor names a buffer that does not exist")
        r.ref(t, _TENSOR_QUANT)

    def check_indices(values: list[int]) -> None:
        if any(not -1 <= v < len(tensors) for v in values):
            raise FlatbufferError("an index names a tensor that does not exist")

    check_indices(r.ints(r.ref(sg, _SG_INPUTS)))
    check_indices(r.ints(r.ref(sg, _SG_OUTPUTS)))
    for op in r.tables(r.ref(sg, _SG_OPERATORS)):
        opcode = r.field(op, _OP_OPCODE)
        if opcode is not None and not 0 <= r.u32(opcode) < n_opcodes:
            raise FlatbufferError("an operator names an opcode that does not exist")
        check_indices(r.ints(r.ref(op, _OP_INPUTS)))
        check_indices(r.ints(r.ref(op, _OP_OUTPUTS)))
        r.ref(op, _OP_OPTIONS)
