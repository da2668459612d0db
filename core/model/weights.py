"""Reading parts of a model's safetensors files, for strategies that load only their shard.

Sharding strategies (FSDP2, DeepSpeed ZeRO-3) give every rank a slice of each weight. Reading
that slice straight from the checkpoint files, with plain reads rather than a memory map, keeps
each rank's host memory at its shard: a mapped file's touched pages would count in its RSS, and
transformers' own loaders read whole tensors. A safetensors tensor is one contiguous row-major
byte range, so any flat element range (ZeRO-3's partitions) or row range (FSDP2's dim-0 shards)
is one contiguous read.

Imports torch only inside the functions that need it (`tune.plugin` imports this module).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

BLOCK_BYTES = 64 << 20  # read in blocks of at most this size, so no read needs a whole tensor
DTYPE_NAMES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL")


@dataclass(frozen=True)
class FileTensor:
    """Where one tensor lies in a safetensors file."""

    path: str
    offset: int  # absolute byte offset of its first element
    dtype: str  # safetensors' name, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


def checkpoint_index(model: Any) -> dict[str, FileTensor]:
    """{key: FileTensor} of the safetensors files the model was configured from.

    Empty when the model's `config._name_or_path` has no local safetensors (not downloaded, or
    a `.bin` checkpoint): callers then fall back to loading the ordinary way."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    source = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    return index_files(weight_files(source))


def index_files(files: list[str]) -> dict[str, FileTensor]:
    index: dict[str, FileTensor] = {}
    for path in files:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for key, entry in header.items():
            if key != "__metadata__" and entry["dtype"] in DTYPE_NAMES:
                start = 8 + size + entry["data_offsets"][0]
                index[key] = FileTensor(path, start, entry["dtype"], tuple(entry["shape"]))
    return index


def weight_files(source: str) -> list[str]:
    """The safetensors files of a local directory or an already downloaded hub model."""
    if not source:
        return []

    def find(name: str) -> str | None:
        if os.path.isdir(source):
            path = os.path.join(source, name)
            return path if os.path.exists(path) else None
        try:
            from transformers.utils import cached_file

            return cached_file(
                source,
                name,
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except Exception:  # not cached here: the caller loads the ordinary way
            return None

    index = find("model.safetensors.index.json")
    if index:
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        found = [find(s) for s in shards]
        return [f for f in found if f] if all(found) else []
    single = find("model.safetensors")
    return [single] if single else []


def file_tensor(name: str, shape: Any, index: dict[str, FileTensor]) -> FileTensor | None:
    """The checkpoint entry of a model parameter, by its name with or without PEFT's wrappers
    (`base_model.model.`, `.base_layer`, ...), if its shape matches."""
    bare = name.removeprefix("base_model.model.")
    for wrapper in (".base_layer", ".original_module", ".modules_to_save.default"):
        bare = bare.replace(wrapper, "")
    for key in (name, bare):
        entry = index.get(key)
        if entry is not None and entry.shape == tuple(shape):
            return entry
    return None


def read_elements(entry: FileTensor, lo: int, hi: int, out: Any) -> None:
    """Copy flat elements [lo, hi) of a checkpoint tensor into `out` (a tensor of hi - lo
    elements, any dtype and device: values are converted), reading block by block."""
    import torch

    dtype = torch_dtype(entry.dtype)
    element = torch.empty((), dtype=dtype).element_size()
    flat = out.view(-1)
    step = max(1, BLOCK_BYTES // element)
    with open(entry.path, "rb", buffering=0) as f:
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            raw = torch.empty((b - a) * element, dtype=torch.uint8)
            f.seek(entry.offset + a * element)
            f.readinto(memoryview(raw.numpy()))
            flat[a - lo : b - lo].copy_(raw.view(dtype))


def torch_dtype(name: str) -> Any:
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }[name]
