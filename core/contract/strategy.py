"""What a strategy must do, and the plain-torch implementation single-device and DDP share.

The loop calls only these methods and never asks which strategy it has. A strategy owns the
process group, device placement, model wrapping, backward/step, accumulation boundaries,
reductions for logging and the save/load of its own checkpoint shards.
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
    # True when parameters are sharded across ranks (ZeRO-3): every rank must join each forward,
    # so sample generation runs on all ranks in lockstep.
    sharded_params = False

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

    # -- loading (optional extension; the defaults load the whole model on every rank) -------
    def loading(self, ctx: RunContext) -> contextlib.AbstractContextManager:
        """Entered by the loader around building the model, before any weight is read.

        Sharding strategies use it so no rank ever holds the whole model: DeepSpeed ZeRO-3
        makes transformers build the model under `deepspeed.zero.Init` (each parameter is
        partitioned as it is created). A loader that builds models should enter it and ask
        `loads_weights`; one that does not simply gets the default behaviour.
        """
        return contextlib.nullcontext()

    def loads_weights(self, ctx: RunContext) -> bool:
        """Whether this rank reads the weights. False: the loader builds the architecture on the
        meta device (no memory, no reading) and `prepare` gives this rank its shard, e.g. read
        from the checkpoint files or sent by a rank that loaded them (FSDP2). Asked inside
        `loading`."""
        return True

    def empty_model(self, build: Callable[[], Any], ctx: RunContext) -> Any:
        """Build the architecture on a rank that does not read the weights (`loads_weights` is
        False); `build()` makes the model from its config. Asked inside `loading`.

        The default builds it on the meta device: no memory, and `prepare` gives the rank its
        shard (FSDP2). A strategy that partitions parameters as they are created (ZeRO-3's
        `zero.Init`) builds them for real and fills its partitions here, so adapters and every
        later step see the checkpoint's weights. Returning None asks the loader to load the
        ordinary way after all (e.g. the files hold converted keys the strategy cannot read)."""
        import torch

        with torch.device("meta"):
            return build()

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

    # -- collectives ---------------------------------------------------------------------------
    def all_reduce_sum(self, value: float) -> float:
        return value

    def barrier(self) -> None:
        return None

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


def current_strategy(ctx: RunContext) -> Strategy | None:
    """The run's strategy, for the loader's `loading`/`loads_weights` calls (None outside a run,
    e.g. `tune merge`)."""
    found = getattr(ctx, "strategy", None)
    return found if isinstance(found, Strategy) else None


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
