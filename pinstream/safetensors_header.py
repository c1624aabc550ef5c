"""Read the header of a ``.safetensors`` file, never its tensor data.

A safetensors file is: 8 bytes (little-endian u64) = N, then N bytes of UTF-8
JSON mapping tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the end of the header), an optional ``__metadata__`` entry,
then the raw tensor bytes.

From the header alone we learn every tensor's dtype, shape and byte size, and by
grouping names into repeated blocks (any ``blocks.N.`` / ``layers.N.`` list, bare
or prefixed: Wan ``blocks.N.``, Flux ``double_blocks.N.`` / ``single_blocks.N.``, SD3
``joint_blocks.N.``, HiDream ``double_stream_blocks.N.``, UNet ``input_blocks.N.`` /
``output_blocks.N.``, DiT ``transformer_blocks.N.``; UNet ``middle_block.``, T5
``encoder.block.N.``; behind any prefix such as ``model.diffusion_model.``) the three sizes the
offload planner needs: total bytes, largest block bytes, non-block bytes.

Every problem with the file raises :class:`SafetensorsError` whose message names
the file and says what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field

# Bytes per element of the dtypes the safetensors format defines.  Sub-byte
# dtypes (F4, F6_*) are packed; their size is checked from the offsets only.
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
PACKED_DTYPES = ("F4", "F6_E2M3", "F6_E3M2")

# The safetensors reference implementation refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000

# A block group is any ``blocks`` / ``layers`` list, bare or with a word prefix joined
# by ``_``: Wan ``blocks.N``, FLUX ``double_blocks.N`` / ``single_blocks.N``, SD3
# ``joint_blocks.N``, HiDream ``double_stream_blocks.N`` / ``single_stream_blocks.N``,
# UNet ``input_blocks.N`` / ``output_blocks.N``, DiT ``transformer_blocks.N``, Wan VACE
# ``vace_blocks.N``, text encoders' ``layers.N``; plus UNet ``middle_block`` and T5
# ``encoder.block.N``.  The engine streams all of them (any ModuleList of composite
# blocks).  Leftmost match wins, so ``input_blocks.4.1.transformer_blocks.0.`` groups as
# ``input_blocks.4``; ``(?:^|\.)`` anchors the group name at a name boundary.
_BLOCK_RE = re.compile(
    r"(?:^|\.)("
    r"(?:\w+_)?(?:blocks|layers)\.\d+"
    r"|middle_block"
    r"|encoder\.block\.\d+"
    r")\."
)


class SafetensorsError(ValueError):
    """The file is missing, not a safetensors file, corrupt or truncated."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    nbytes: int
    begin: int
    end: int
    offset: int = 0  # where its bytes start in the file: after the 8-byte length and the header


@dataclass
class ModelSizes:
    """Byte sizes of one file, grouped into repeated blocks."""

    path: str
    total_bytes: int
    largest_block_bytes: int
    largest_block: str | None
    nonblock_bytes: int
    blocks: dict = field(default_factory=dict)  # block key -> bytes, in file order
    tensor_count: int = 0
    dtypes: dict = field(default_factory=dict)  # dtype -> bytes
    metadata: dict = field(default_factory=dict)

    @property
    def block_count(self) -> int:
        return len(self.blocks)

    @property
    def has_blocks(self) -> bool:
        # One block is not a repeated structure worth streaming.
        return len(self.blocks) >= 2


def block_key(name: str) -> str | None:
    """The block a tensor belongs to (``prefix.blocks.3``) or None."""
    m = _BLOCK_RE.search(name)
    if m is None:
        return None
    return name[: m.end() - 1]


def _fail(path, what) -> SafetensorsError:
    return SafetensorsError(f"{path}: {what}")


def read_header(path) -> tuple[dict, int, int]:
    """Return (header dict, header length N, file size) after validating N."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise _fail(p, "no such file")
    if not os.path.isfile(p):
        raise _fail(p, "not a regular file")
    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _fail(p, f"truncated: {size} bytes, too short for the 8-byte safetensors header length")
            (n,) = struct.unpack("<Q", head)
            if n == 0:
                raise _fail(p, "not a safetensors file: header length is 0")
            if n > MAX_HEADER_BYTES:
                raise _fail(
                    p,
                    f"not a safetensors file: header length {n} bytes is above the format's "
                    f"{MAX_HEADER_BYTES}-byte limit",
                )
            if 8 + n > size:
                raise _fail(p, f"truncated: header claims {n} bytes but the file has only {size - 8} after the length")
            raw = f.read(n)
    except OSError as e:
        raise _fail(p, f"cannot read: {e.strerror or e}") from None
    if len(raw) != n:
        raise _fail(p, f"truncated: read {len(raw)} of {n} header bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(p, f"corrupt header: not UTF-8 (byte {e.start})") from None
    try:
        header = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(p, f"corrupt header: invalid JSON at byte {e.pos}: {e.msg}") from None
    if not isinstance(header, dict):
        raise _fail(p, f"corrupt header: expected a JSON object, got {type(header).__name__}")
    return header, n, size


def read_tensors(path) -> tuple[list[TensorInfo], dict]:
    """Validated tensor entries (file order) and the ``__metadata__`` dict."""
    p = os.fspath(path)
    header, n, size = read_header(p)
    data_bytes = size - 8 - n
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise _fail(p, "corrupt header: __metadata__ is not an object")
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _fail(p, f"corrupt header: entry {name!r} is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise _fail(p, f"corrupt header: tensor {name!r} has no dtype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _fail(p, f"corrupt header: tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or offsets[0] < 0
            or offsets[1] < offsets[0]
        ):
            raise _fail(p, f"corrupt header: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = end - begin
        if dtype in DTYPE_BYTES:
            expected = math.prod(shape) * DTYPE_BYTES[dtype]
            if expected != nbytes:
                raise _fail(
                    p,
                    f"corrupt header: tensor {name!r} ({dtype} {shape}) needs {expected} bytes "
                    f"but its data_offsets span {nbytes}",
                )
        elif dtype not in PACKED_DTYPES:
            raise _fail(p, f"corrupt header: tensor {name!r} has unknown dtype {dtype!r}")
        if end > data_bytes:
            raise _fail(
                p,
                f"truncated: tensor {name!r} ends at data byte {end} but the file holds only "
                f"{data_bytes} data bytes (file size {size})",
            )
        tensors.append(TensorInfo(name, dtype, tuple(shape), nbytes, begin, end, 8 + n + begin))
    return tensors, metadata


def summarize(tensors, path: str = "", metadata: dict | None = None) -> ModelSizes:
    """Group tensor bytes into blocks; return the planner's sizes."""
    blocks: dict = {}
    dtypes: dict = {}
    total = 0
    nonblock = 0
    for t in tensors:
        total += t.nbytes
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.nbytes
        key = block_key(t.name)
        if key is None:
            nonblock += t.nbytes
        else:
            blocks[key] = blocks.get(key, 0) + t.nbytes
    largest_key = max(blocks, key=blocks.get) if blocks else None
    return ModelSizes(
        path=path,
        total_bytes=total,
        largest_block_bytes=blocks[largest_key] if largest_key else 0,
        largest_block=largest_key,
        nonblock_bytes=nonblock,
        blocks=blocks,
        tensor_count=len(tensors),
        dtypes=dtypes,
        metadata=dict(metadata or {}),
    )


def summarize_file(path) -> ModelSizes:
    """Read only the header of ``path`` and return its sizes."""
    tensors, metadata = read_tensors(path)
    p = os.fspath(path)
    if not tensors:
        raise _fail(p, "holds no tensors")
    return summarize(tensors, path=p, metadata=metadata)
