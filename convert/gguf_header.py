"""A GGUF file's header walked with bounds taken from the file's size, before `gguf.GGUFReader` sees it.

The reader trusts every count in the header: an array length of 2**40 makes it loop and allocate until
memory runs out, a truncated tensor surfaces as a numpy reshape error. Here every count, string and tensor
is checked to fit in the bytes that are actually there (each array item, key or tensor entry takes at least
one byte), so a damaged or hostile file costs a few reads and one line naming what is wrong.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from tinyllama.convert.common import ConvertError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Cursor:
    def __init__(self, data, source: str) -> None:
        self.data, self.pos, self.source, self.order = data, 0, source, "<"

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def fail(self, problem: str) -> ConvertError:
        return ConvertError(f"{self.source}: {problem}; the file is damaged: re-download or re-export it")

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise self.fail(f"truncated in the header ({what} needs {n} bytes at offset {self.pos}, {self.left} left)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack(self.order + fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, min_item: int) -> int:
        """A length field, bounded: `min_item` bytes per item must still be in the file."""
        n = self.unpack("Q", what)
        if n * min_item > self.left:
            raise self.fail(f"{what} is {n:,}, more than the remaining {self.left:,} bytes can hold")
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"length of {what}", 1), what)
        return bytes(raw).decode("utf-8", errors="replace")


def _skip_value(cur: _Cursor, kind: int, key: str, depth: int = 0) -> object:
    """Skip one metadata value (returning small scalars, which `general.alignment` needs)."""
    if kind in SCALARS:
        return cur.unpack(SCALARS[kind], key)
    if kind == STRING:
        cur.take(cur.count(f"length of '{key}'", 1), key)
        return None
    if kind == ARRAY and depth < 2:
        item = cur.unpack("I", f"item type of '{key}'")
        if item in SCALARS:
            size = struct.calcsize(SCALARS[item])
            cur.take(cur.count(f"length of '{key}'", size) * size, key)
            return None
        if item not in (STRING, ARRAY):
            raise cur.fail(f"metadata '{key}' has unknown item type {item}")
        for _ in range(cur.count(f"length of '{key}'", 8 if item == STRING else 12)):
            _skip_value(cur, item, key, depth + 1)
        return None
    raise cur.fail(f"metadata '{key}' has unknown value type {kind}")


def check_gguf_header(path: Path) -> None:
    """Walk magic, version, metadata and tensor table; every tensor's data must lie inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    source = str(path)
    size = path.stat().st_size
    if size < 24:
        raise ConvertError(f"{source} is not a GGUF file ({size} bytes); re-download or re-export it")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cur = _Cursor(data, source)
        if cur.take(4, "magic") != MAGIC:
            raise ConvertError(f"{source} is not a GGUF file (no GGUF magic); pass a .gguf file or a model directory")
        version = cur.unpack("I", "version")
        if version & 0xFFFF == 0:  # written on a big-endian machine
            cur.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in VERSIONS:
            raise ConvertError(f"{source}: GGUF version {version} is not supported (2 or 3); re-export it")
        n_tensors = cur.count("tensor count", 24)
        n_keys = cur.count("metadata count", 13)
        alignment = DEFAULT_ALIGNMENT
        for _ in range(n_keys):
            key = cur.string("metadata key")
            value = _skip_value(cur, cur.unpack("I", f"type of '{key}'"), key)
            if key == "general.alignment":
                alignment = value if isinstance(value, int) else 0
                if alignment <= 0 or alignment & (alignment - 1):
                    raise cur.fail(f"general.alignment {value!r} is not a power of two")
        tensors = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.unpack("I", f"dimensions of '{name}'")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} expected)")
            dims = [cur.unpack("Q", f"shape of '{name}'") for _ in range(n_dims)]
            kind = cur.unpack("I", f"type of '{name}'")
            offset = cur.unpack("Q", f"offset of '{name}'")
            tensors.append((name, dims, kind, offset))
        start = -(-cur.pos // alignment) * alignment
        for name, dims, kind, offset in tensors:
            try:
                qtype = GGMLQuantizationType(kind)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise cur.fail(f"tensor '{name}' has unknown type {kind}") from None
            if min(dims) == 0:
                raise cur.fail(f"tensor '{name}' has an empty dimension {dims}")
            if dims[0] % block:
                raise cur.fail(f"tensor '{name}' rows ({dims[0]}) are not whole {qtype.name} blocks of {block}")
            n_bytes = 1
            for d in dims:
                n_bytes *= d
                if n_bytes > size * block:  # stop before the product itself grows absurd
                    break
            n_bytes = n_bytes // block * type_size
            if start + offset + n_bytes > size:
                raise ConvertError(
                    f"{source} is truncated: tensor '{name}' ends at byte {start + offset + n_bytes:,}, "
                    f"the file has {size:,}; re-download or re-export it"
                )
