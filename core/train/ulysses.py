"""The exchanges of Ulysses sequence parallelism (`tune.train.sequence_parallel`): the
differentiable all-to-all that trades positions for heads around attention, and the sum over a
group. `sp` is the run's `SequenceParallel` (its `size`, `rank` in the group and `group`).

Shapes: a rank holds [B, H, C, D] (all heads, C = L / N positions) before attention and needs
[B, H_r, L, D] (its heads, every position); the output goes back the other way. Heads are
split by `head_split`, unevenly where they do not divide. gloo and NCCL both implement
`all_to_all_single` with uneven splits, so this runs on CPU as on GPU.
"""

from __future__ import annotations

from typing import Any


def _all_to_all(x: Any, sends: list[int], receives: list[int], group: Any) -> Any:
    """Differentiable all-to-all of a flat tensor: `sends[j]` elements go to rank j of the
    group, `receives[i]` come from rank i. Its backward is the reverse exchange."""
    import torch
    import torch.distributed as dist

    def exchange(tensor: Any, out_sizes: list[int], in_sizes: list[int]) -> Any:
        # contiguous in and out: the collective reads and writes flat buffers, and a gradient
        # arrives as a permuted view
        tensor = tensor.contiguous()
        out = torch.empty(sum(out_sizes), dtype=tensor.dtype, device=tensor.device)
        dist.all_to_all_single(
            out, tensor, output_split_sizes=out_sizes, input_split_sizes=in_sizes, group=group
        )
        return out

    class AllToAll(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, tensor: Any) -> Any:
            return exchange(tensor, receives, sends)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return exchange(grad, sends, receives)

    return AllToAll.apply(x)


def head_split(heads: int, kv_heads: int, size: int) -> tuple[list[int], list[int]]:
    """(query heads, key/value heads) each rank attends with: the key/value heads split as
    evenly as they go (contiguous, the first ranks one more where they do not divide), each
    with the query heads that read it. Uneven where the heads do not divide by the group size
    (SmolLM2's 9 heads and 3 key/value heads over 2 ranks: 6 + 3): exact, the attention load
    is then uneven."""
    group = heads // kv_heads
    kv = [kv_heads // size + (1 if r < kv_heads % size else 0) for r in range(size)]
    return [group * k for k in kv], kv


def gather_sequence(x: Any, sp: Any, split: list[int]) -> Any:
    """[B, H, C, D] (all heads, this slice) -> [B, H_r, L, D] (this rank's heads, all slices);
    `split[j]` heads go to rank j."""
    b, _, c, d = x.shape
    mine = split[sp.rank]
    unit = b * c * d
    flat = x.permute(1, 0, 2, 3).reshape(-1)  # heads first: rank j's heads are one block
    out = _all_to_all(flat, [h * unit for h in split], [mine * unit] * sp.size, sp.group)
    out = out.view(sp.size, mine, b, c, d)  # [slice i, my heads, B, C, D]
    return out.permute(2, 1, 0, 3, 4).reshape(b, mine, sp.size * c, d)


def scatter_sequence(x: Any, sp: Any, split: list[int]) -> Any:
    """[B, L, H_r, D] (attention output, this rank's heads) -> [B, C, H, D]."""
    b, length, mine, d = x.shape
    n = sp.size
    c = length // n
    flat = x.reshape(b, n, c, mine, d).permute(1, 0, 2, 3, 4).reshape(-1)  # slice i first
    receives = [b * c * h * d for h in split]
    out = _all_to_all(flat, [b * c * mine * d] * n, receives, sp.group)
    parts = [p.view(b, c, h, d) for p, h in zip(out.split(receives), split, strict=True)]
    import torch

    return torch.cat(parts, dim=2)


def group_sum(x: Any, group: Any) -> Any:
    """A differentiable sum over the group: every rank's result depends on every rank's input,
    so the backward sums the gradients too."""
    import torch
    import torch.distributed as dist

    class GroupSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, tensor: Any) -> Any:
            out = tensor.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(out, group=group)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            out = grad.clone(memory_format=torch.contiguous_format)
            dist.all_reduce(out, group=group)
            return out

    return GroupSum.apply(x)
