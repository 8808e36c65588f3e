"""A GGUF file checked before it is registered as a base model.

Four magic bytes prove nothing: the whole header (version, metadata, tensor table) is parsed
with the ``gguf`` library (ggml's own reader), and every tensor's data must lie inside the file,
so a truncated download or a stray file named ``*.gguf`` is refused when the operator adds it,
not when a worker first tries to convert it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


@dataclass(frozen=True)
class GgufSummary:
    """What the registry learns from a GGUF file's header."""

    version: int
    architecture: str
    tensor_count: int


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="source", code="invalid_model")


def inspect_gguf(path: Path) -> GgufSummary:
    """Parse ``path``'s GGUF header; InvalidRequest naming the problem if it is not a usable
    GGUF model file (OSError if it cannot be read)."""
    if not path.is_file():
        raise _refuse(f"{path} is not a file")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise _refuse(f"{path} is not a GGUF file (bad magic number)")
    # numpy comes with the reader: imported only when a GGUF file is registered.
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, TypeError) as exc:
        raise _refuse(f"{path} is not a complete GGUF file ({exc})") from None
    version = int(reader.fields["GGUF.version"].contents())
    if version not in SUPPORTED_VERSIONS:
        raise _refuse(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
    architecture = reader.fields.get("general.architecture")
    if architecture is None:
        raise _refuse(f"{path} has no general.architecture: not a GGUF model file")
    if not reader.tensors:
        raise _refuse(f"{path} holds no tensors: not a GGUF model file")
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise _refuse(
                f"{path} is not a complete GGUF file (tensor {tensor.name} ends past its end)"
            )
    return GgufSummary(
        version=version, architecture=str(architecture.contents()), tensor_count=len(reader.tensors)
    )
