"""Low-memory loading for FSDP2: every rank materializes only its own shard.

Rank 0 built the model from the checkpoint (transformers maps safetensors lazily, so that costs
little until touched); the other ranks built it on the meta device. Before sharding, every rank
turns its model into meta tensors (rank 0 keeps the values that are not in the checkpoint
files: adapters, non-persistent buffers), `fully_shard` then allocates nothing, `to_empty`
allocates just this rank's shards, and each shard is filled:

- weights found in the checkpoint's safetensors files: read by this rank directly from the file
  (only its own rows, with plain reads: no memory map, so file pages never count in its RSS);
- everything else (adapter weights, renamed keys, buffers such as rotary tables): broadcast from
  rank 0 in row blocks, each rank keeping its rows.

The collectives run in the same order on every rank: parameters in name order, then buffers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from tune.plugin import weights

BLOCK_BYTES = 64 << 20  # rows are broadcast in blocks of at most this size


class Filler:
    """`start` before fully_shard (all ranks), `finish` after it (all ranks)."""

    def __init__(self, model: Any, world: Any, device: str, collectives: Any):
        self.model, self.rank, self.size, self.device = model, world.rank, world.world_size, device
        self.collectives = collectives  # the run's `ctx.collectives`
        # Collectives run on the process group's device: NCCL takes CUDA tensors only, even
        # when the shards themselves are offloaded to the CPU.
        self.comm = world.device if str(world.device).startswith("cuda") else "cpu"
        self.files: dict[str, weights.FileTensor] = {}
        self.stash: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}

    def start(self) -> None:
        _check_same_structure(self.model, self.rank, self.comm)
        index = weights.checkpoint_index(self.model)
        aliases: dict[int, list[str]] = {}  # tied weights may be saved under either name
        for name, param in self.model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
        for name, param in self.model.named_parameters():
            for alias in aliases[id(param)]:
                found = weights.file_tensor(alias, param.shape, index)
                if found is not None:
                    self.files[name] = found
                    break
        # Every rank must agree on what is read and what is broadcast (a rank on another node
        # may not see the files): if they do not, rank 0 broadcasts everything.
        found = len(self.files)
        if self.collectives.all_reduce_max(found) != self.collectives.all_reduce_min(found):
            self.files = {}
        self.sent = [n for n, _ in self.model.named_parameters() if n not in self.files]
        if self.rank == 0:
            params = dict(self.model.named_parameters())
            self.stash = {name: params[name].detach() for name in self.sent}
        if self.rank == 0:
            self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        _to_meta(self.model)

    def finish(self) -> None:
        self.model.to_empty(device=self.device)
        with torch.no_grad():
            for name, param in sorted(self.model.named_parameters()):
                local = param.to_local()
                lo, hi = _own_rows(param.shape[0], self.rank, self.size)
                if name in self.files:
                    _read_rows(local, self.files[name], lo, hi)
                else:
                    full = self.stash.pop(name, None)
                    _broadcast_rows(local, full, param.shape, lo, hi, self.comm)
            for name, buffer in sorted(self.model.named_buffers()):
                sent = torch.empty_like(buffer, device=self.comm)
                if self.rank == 0:
                    sent.copy_(self.buffers[name])
                dist.broadcast(sent, src=0)
                buffer.copy_(sent)
        self.stash.clear()
        self.buffers.clear()


def _check_same_structure(model: Any, rank: int, device: str) -> None:
    """The meta-built model must match rank 0's, or the broadcasts would pair wrong tensors."""
    spec = [
        (n, tuple(p.shape), str(p.dtype))
        for n, p in (*model.named_parameters(), *model.named_buffers())
    ]
    digest = hashlib.sha256(repr(spec).encode()).digest()[:8]
    mine = torch.tensor(
        [int.from_bytes(digest, "little", signed=True)], dtype=torch.int64, device=device
    )
    theirs = mine.clone()
    dist.broadcast(theirs, src=0)
    if int(theirs) != int(mine):
        raise RuntimeError(
            f"rank {rank} built a model whose parameters differ from rank 0's loaded one "
            "(names, shapes or dtypes), so the weights cannot be distributed; set [strategy] "
            f"low_memory_load = false. First entries here: {spec[:3]!r}"
        )


def _to_meta(model: Any) -> None:
    """Replace every parameter and buffer by a meta tensor, keeping tied parameters tied."""
    new: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for key, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in new:
                meta = torch.empty_like(param, device="meta")
                new[id(param)] = torch.nn.Parameter(meta, requires_grad=param.requires_grad)
            module._parameters[key] = new[id(param)]
        for key, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[key] = torch.empty_like(buffer, device="meta")


def _own_rows(rows: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's rows under torch.chunk (FSDP2's Shard(0)): ceil(rows/size) each, last fewer."""
    per = -(-rows // size)
    return min(rank * per, rows), min((rank + 1) * per, rows)


def _block_rows(shape: Any, element_size: int) -> int:
    row = element_size * max(1, int(torch.Size(shape[1:]).numel()))
    return max(1, BLOCK_BYTES // row)


def _read_rows(local: torch.Tensor, entry: weights.FileTensor, lo: int, hi: int) -> None:
    """Rows [lo, hi) of a checkpoint tensor into this rank's shard: one contiguous range."""
    row = int(torch.Size(entry.shape[1:]).numel())
    weights.read_elements(entry, lo * row, hi * row, local)


def _broadcast_rows(
    local: torch.Tensor, full: torch.Tensor | None, shape: Any, lo: int, hi: int, device: str
):
    """Rank 0 sends the full tensor in row blocks (on the group's `device`); every rank keeps
    rows [lo, hi)."""
    rows = shape[0]
    step = _block_rows(shape, local.element_size())
    for start in range(0, max(rows, 1), step):
        stop = min(start + step, rows)
        if full is not None:
            block = full[start:stop].to(device=device, dtype=local.dtype).contiguous()
        else:
            block = torch.empty((stop - start, *shape[1:]), dtype=local.dtype, device=device)
        dist.broadcast(block, src=0)
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            local[a - lo : b - lo].copy_(block[a - start : b - start])
