"""What a strategy must do, and the plain-torch implementation single-device and DDP share.

The loop calls only these methods and never asks which strategy it has. A strategy owns the
process group, device placement, model wrapping, how the model is built on each rank,
backward/step, accumulation boundaries and the save/load of its own checkpoint shards.
Reductions go through the run's `Collectives` (`ctx.collectives`); what a strategy supports
(processes, sharded parameters, quantized models, precisions) is declared as capabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune.contract.context import RunContext, World
from tune.machine.devices import auto_device, resolve_precision


class Strategy:
    """Single process, one device; subclasses override what differs."""

    name = "single"
    # Ranks per group that split every sequence between them (`[strategy] sequence_parallel`,
    # tune.train.sequence_parallel): the ranks of a group get the same examples. 1: none.
    sequence_parallel: int = 1

    def __init__(self, device: str | None = None):
        self.requested_device = device
        self.scaler = None
        self.precision = "fp32"

    # -- set-up ------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> World:
        """Pick the device and describe this process's place in the world."""
        return World(
            rank=0, world_size=1, local_rank=0, device=self.requested_device or auto_device()
        )

    def prepare(self, model: Any, optimizer: Any, ctx: RunContext) -> tuple[Any, Any]:
        """Place and wrap the model; returns (model to call, optimizer to step)."""
        device = ctx.world.device
        if not _is_quantized(model):
            model.to(device)
        self.precision = resolve_precision(ctx.recipe.train.precision, device)
        if self.precision == "fp16":
            import torch

            self.scaler = torch.amp.GradScaler(device.split(":")[0])
        return model, optimizer

    def unwrap(self, model: Any) -> Any:
        return getattr(model, "module", model)

    # -- building the model (optional; the default loads the whole model on every rank) -------
    def load_model(
        self,
        load: Callable[[], Any],
        build_empty: Callable[[], Any],
        checkpoint: str | None,
        ctx: RunContext,
    ) -> Any:
        """The model for this rank, as the loader would build it. Called by the loader.

        `load()` reads the whole model the ordinary way; `build_empty()` builds the architecture
        from its config without reading a weight (in the current device context: wrap it in
        `torch.device("meta")` for no memory at all); `checkpoint` is the folder holding the
        model's safetensors files when a rank may read its own shard from them (None for GGUF
        input or a pinned revision). A sharding strategy uses them so no rank ever holds the
        whole model: FSDP2 builds on the meta device where rank 0 loads, DeepSpeed ZeRO-3
        builds under `zero.Init` and fills each rank's partitions from the files.
        """
        return load()

    # -- steps -------------------------------------------------------------------------------
    def autocast(self, ctx: RunContext):
        import torch

        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(ctx.world.device.split(":")[0], dtype=dtype)
        return contextlib.nullcontext()

    def accumulate(self, model: Any, is_last: bool):
        """Context for one micro-batch; DDP skips the gradient sync unless `is_last`."""
        return contextlib.nullcontext()

    def backward(self, loss: Any, model: Any) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, model: Any, optimizer: Any, max_grad_norm: float) -> float | None:
        """Clip, step, zero. Returns the pre-clip gradient norm when clipping is on."""
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        norm = None
        if max_grad_norm > 0:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, model: Any, optimizer: Any, path: Path, ctx: RunContext) -> None:
        """Trainable weights (safetensors) and optimizer state; frozen weights come from the base."""
        import torch
        from safetensors.torch import save_file

        if not ctx.world.is_main:
            return
        state = trainable_state(self.unwrap(model))
        save_file(state, str(path / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), path / "scaler.pt")

    def checkpoint_globals(self) -> list[type]:
        """Classes, beyond tensors and plain containers, that this strategy's checkpoint files
        hold in their pickles (a library's own state objects). Before a resume every pickle in
        the checkpoint is checked against torch's weights-only allow-list plus these; a file
        needing anything else is refused, since unpickling it could run code."""
        return []

    def load_checkpoint(self, model: Any, optimizer: Any, path: Path, ctx: RunContext) -> None:
        import torch
        from safetensors.torch import load_file

        load_trainable(self.unwrap(model), load_file(str(path / "trainable.safetensors")))
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=ctx.world.device, weights_only=True)
        )
        if self.scaler is not None and (path / "scaler.pt").exists():
            self.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))

    def save_final(self, model: Any, tokenizer: Any, path: Path, ctx: RunContext) -> None:
        """The artifact users keep: loadable by plain transformers/peft, no tune needed."""
        if not ctx.world.is_main:
            return
        self.unwrap(model).save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))

    def teardown(self) -> None:
        return None


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None))


def trainable_state(model: Any) -> dict[str, Any]:
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {missing[:3]}, unknown {unknown[:3]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
