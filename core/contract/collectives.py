"""`Collectives`: the run's one way to reduce over ranks (`ctx.collectives`).

The core, objectives, metrics and strategies all reduce through it, so every rank makes the
same calls in the same order. Outside a multi-process run (or before a strategy started a
process group) every call returns its argument. Imports torch only when reducing.
"""

from __future__ import annotations


class Collectives:
    """Sums, extremes and barriers over torch.distributed's default process group."""

    def __init__(self, device: str = "cpu"):
        # NCCL reduces CUDA tensors only; gloo (CPU) takes CPU tensors.
        self.device = device

    @staticmethod
    def _active() -> bool:
        import sys

        if "torch" not in sys.modules:  # nothing started a process group without torch
            return False
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _reduce(self, value: float, op: str) -> float:
        if not self._active():
            return value
        import torch
        import torch.distributed as dist

        device = self.device if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
        return float(tensor.item())

    def all_reduce_sum(self, value: float) -> float:
        """`value` summed over every rank. Call it the same number of times on every rank."""
        return self._reduce(value, "SUM")

    def all_reduce_min(self, value: float) -> float:
        """The smallest `value` of any rank (e.g. whether every rank can do something)."""
        return self._reduce(value, "MIN")

    def all_reduce_max(self, value: float) -> float:
        """The largest `value` of any rank (e.g. whether any rank got a signal)."""
        return self._reduce(value, "MAX")

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self._active():
            import torch.distributed as dist

            dist.barrier()
