"""ONNX file utilities: which external-data files a graph names, and inlining external data back
into one protobuf without holding two copies of the weights in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.errors import ClipExportError


def external_data_files(onnx_path: Path) -> list[str]:
    """The external data files an ONNX model refers to, read without loading the weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                locations.add(item.value)
    return sorted(locations)


def make_strided_initializers_lazy(model: Any) -> None:
    """Constant folding leaves transposed weights as strided numpy views, which numpy's tofile
    writes element by element (seconds per tower). A lazy tensor makes one contiguous copy of one
    weight at a time while saving, instead of all of them up front."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(tensor, ir.Tensor) and isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.LazyTensor(
                lambda raw=raw: ir.Tensor(np.ascontiguousarray(raw)),
                dtype=tensor.dtype,
                shape=tensor.shape,
                name=tensor.name,
            )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_GRAPH_FIELD = bytes([(7 << 3) | 2])  # ModelProto.graph
_INITIALIZER_FIELD = bytes([(5 << 3) | 2])  # GraphProto.initializer
_RAW_DATA_FIELD = bytes([(9 << 3) | 2])  # TensorProto.raw_data


def inline_external_data(onnx_path: Path, chunk: int = 1 << 24) -> None:
    """Rewrite a model whose initializers live in external files as one self-contained file.

    The protobuf is written field by field, streaming each tensor's bytes from its data file, so
    memory stays at one chunk instead of two full copies of the weights (a ModelProto and its
    serialised bytes). Repeated fields may appear in any order, so the initializers are appended
    after the rest of the graph.
    """
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(onnx_path), load_external_data=False)
    base = onnx_path.parent
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return
    stubs = []
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        stub = TensorProto()
        stub.CopyFrom(tensor)
        stub.ClearField("external_data")
        stub.ClearField("data_location")
        stub.ClearField("raw_data")
        length = (
            int(info["length"])
            if "length" in info
            else (base / info["location"]).stat().st_size - int(info.get("offset", 0))
        )
        stubs.append((stub.SerializeToString(), base / info["location"], int(info.get("offset", 0)), length))
    kept = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    graph_head = model.graph.SerializeToString()
    model.ClearField("graph")
    model_head = model.SerializeToString()
    entries = []
    for stub, _, _, length in stubs:
        tensor_size = len(stub) + 1 + len(_varint(length)) + length
        entries.append(tensor_size)
    graph_size = len(graph_head) + sum(1 + len(_varint(size)) + size for size in entries)
    tmp = onnx_path.with_name(f".{onnx_path.name}.inline-{os.getpid()}")
    data_files = {source for _, source, _, _ in stubs}
    try:
        with open(tmp, "wb") as out:
            out.write(model_head + _GRAPH_FIELD + _varint(graph_size) + graph_head)
            for (stub, source, offset, length), size in zip(stubs, entries):
                out.write(_INITIALIZER_FIELD + _varint(size) + stub + _RAW_DATA_FIELD + _varint(length))
                with open(source, "rb") as data:
                    data.seek(offset)
                    remaining = length
                    while remaining:
                        block = data.read(min(chunk, remaining))
                        if not block:
                            raise ClipExportError(f"external data file {source.name} is shorter than its tensors say")
                        out.write(block)
                        remaining -= len(block)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    for source in data_files:
        source.unlink(missing_ok=True)
