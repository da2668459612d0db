"""The FSDP2 strategy: fully_shard per decoder layer and the root, DCP checkpoints, gathered final/.

Low-memory loading (`low_memory_load`, on by default): rank 0 builds the model from the
checkpoint, the others on the meta device (`load_model`, called by the loader); `prepare`
shards meta tensors and fills each rank's shards only (see `lowmem`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tune.plugin import Strategy, TuneError, World, processes, resolve_precision

DCP_DIR = "fsdp"  # the DCP folder inside checkpoints/step-N/
METADATA = ".metadata"  # DCP's index of the folder, a pickle


class FSDPStrategy(Strategy):
    name = "fsdp"

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.sequence_parallel = settings.sequence_parallel

    # -- set-up ------------------------------------------------------------------------------
    def setup(self, ctx) -> World:
        world = processes.start_process_group(
            ctx, "fsdp", self.settings.backend, self.settings.timeout_s
        )
        self.precision = resolve_precision(ctx.recipe.train.precision, world.device)
        return world

    def load_model(self, load, build_empty, checkpoint, ctx):
        """With low_memory_load, rank 0 loads the model and every other rank builds it on the
        meta device (no memory, nothing read); `prepare` then gives each rank its shard, read
        from the checkpoint files or sent by rank 0. `checkpoint` is not needed here: the files
        are found from the built model (`weights.checkpoint_index`)."""
        if ctx.world.rank == 0 or not self.settings.low_memory_load:
            return load()
        with torch.device("meta"):
            return build_empty()

    def prepare(self, model, optimizer, ctx):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        cuda = ctx.world.device.startswith("cuda")
        mesh = init_device_mesh("cuda" if cuda else "cpu", (ctx.world.world_size,))
        # The optimizer was built on the unsharded parameters: remember them by name and drop
        # its references (so full weights are freed as units shard), then point it at the shards.
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["params"] = []
        if self.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            mp = MixedPrecisionPolicy()
        offload = (
            CPUOffloadPolicy(pin_memory=cuda) if self.settings.cpu_offload else OffloadPolicy()
        )
        kwargs = {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}
        units = self._units(model, ctx)
        filler = None
        if self._fills(model, ctx):
            from tune_plugin_fsdp.lowmem import Filler

            local = ctx.world.device if cuda and not self.settings.cpu_offload else "cpu"
            filler = Filler(model, ctx.world, local, ctx.collectives)
            filler.start()  # every rank: meta tensors, so sharding allocates nothing yet
        for _, module in units:
            fully_shard(module, reshard_after_forward=self.settings.reshard_after_forward, **kwargs)
        fully_shard(model, **kwargs)
        if filler is not None:
            filler.finish()  # this rank's shards only: read from the files or sent by rank 0
            ctx.print(
                f"fsdp low-memory load: {len(filler.files)} weights read by each rank from the "
                f"checkpoint files (its rows only), {len(filler.sent)} sent by rank 0"
            )
        if hasattr(model, "generate"):  # samples: generate() gathers the root like forward()
            register_fsdp_forward_method(model, "generate")
        params = dict(model.named_parameters())
        for group, wanted in zip(optimizer.param_groups, groups, strict=True):
            group["params"] = [params[n] for n in wanted]
        return model, optimizer

    def _fills(self, model, ctx) -> bool:
        """Low-memory loading is on and some rank built its model on the meta device."""
        if not self.settings.low_memory_load:
            return False
        meta = any(p.is_meta for p in model.parameters())
        return bool(ctx.collectives.all_reduce_max(int(meta)))

    def _units(self, model, ctx) -> list[tuple[str, Any]]:
        """(prefix, module) of each module sharded on its own: decoder layers by default."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        classes = set(self.settings.wrap) or set(getattr(base, "_no_split_modules", None) or ())
        units = [
            (name + ".", m)
            for name, m in model.named_modules()
            if name and type(m).__name__ in classes
        ]
        if not units:
            raise TuneError(
                f"no module of class {sorted(classes) or '(none known)'} in "
                f"{type(base).__name__} to shard layer by layer.",
                where=f"{ctx.recipe.path}: [strategy] wrap",
                fix='set wrap = ["MyDecoderLayer"] to the class name of the model\'s layers.',
            )
        return units

    def unwrap(self, model):
        return model  # fully_shard changes the class in place; there is no wrapper

    # -- steps -------------------------------------------------------------------------------
    def autocast(self, ctx):
        # The mixed precision policy casts gathered weights to bf16 for compute; fp32 otherwise.
        return contextlib.nullcontext()

    def accumulate(self, model, is_last: bool):
        """Skip the reduce-scatter (and, by default, re-sharding) until the last micro-batch."""
        model.set_requires_gradient_sync(is_last)
        if not self.settings.reshard_between_micro_batches:
            model.set_reshard_after_backward(is_last)
        return contextlib.nullcontext()

    def step(self, model, optimizer, max_grad_norm: float) -> float | None:
        norm = None
        if max_grad_norm > 0:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            total = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, model, optimizer, path: Path, ctx) -> None:
        """Each rank writes its shards of the trainable weights and optimizer state (DCP).
        Before a resume the core checks every pickle in them (the `.metadata` and the torch.save
        archives joined in each `.distcp` file) against `checkpoint_globals`."""
        import torch.distributed.checkpoint as dcp

        dcp.save(_state(model, optimizer), checkpoint_id=str(path / DCP_DIR))

    def checkpoint_globals(self) -> list[type]:
        """The classes of torch.distributed.checkpoint's `.metadata` pickle (which DCP reads
        with `pickle.load`): its metadata dataclasses, the storage info of the file system
        writer and the checkpoint's path (`StorageMeta.checkpoint_id`, a `pathlib` path).
        Found by unpickling a real `.metadata` with a recording `find_class`; torch.Size, dtypes
        and layouts are on torch's own allow-list."""
        from torch.distributed.checkpoint import metadata
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        return [
            metadata.Metadata,
            metadata.MetadataIndex,
            metadata.StorageMeta,
            metadata.TensorProperties,
            metadata.TensorStorageMetadata,
            metadata.BytesStorageMetadata,
            metadata.ChunkStorageMetadata,
            metadata._MEM_FORMAT_ENCODING,
            _StorageInfo,
            type(Path()),  # PosixPath (WindowsPath on Windows)
        ]

    def load_checkpoint(self, model, optimizer, path: Path, ctx) -> None:
        """DCP re-shards on load, so the checkpoint may come from a different world size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        folder = path / DCP_DIR
        if not (folder / METADATA).exists():
            raise TuneError(
                "no FSDP (torch.distributed.checkpoint) shards in this checkpoint.",
                where=str(path),
                fix="resume with the same [strategy] name that wrote the checkpoint.",
            )
        state = _state(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(ignore_frozen_params=True, strict=False),
        )

    def save_final(self, model, tokenizer, path: Path, ctx) -> None:
        """Gather the full state dict on rank 0 and save a plain model or PEFT adapter."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not ctx.world.is_main:
            return
        seen: set[int] = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen:  # a tied alias (lm_head = embed_tokens): saved once, as usual
                state.pop(name, None)
            seen.add(id(param))
        with _plain_class(model):
            model.save_pretrained(str(path), state_dict=state)
        tokenizer.save_pretrained(str(path))

    def teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _state(model, optimizer) -> dict[str, Any]:
    """Sharded trainable weights and optimizer state, keyed by parameter name (DCP re-shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(
        model, optimizer, options=StateDictOptions(ignore_frozen_params=True)
    )
    return {"model": weights, "optimizer": optim}


@contextlib.contextmanager
def _plain_class(model):
    """fully_shard renames the class (FSDPLlamaForCausalLM); save under the real name so
    config.json's `architectures` is what transformers knows."""
    from torch.distributed.fsdp import FSDPModule

    sharded = type(model)
    plain = next(c for c in sharded.__mro__ if not issubclass(c, FSDPModule))
    model.__class__ = plain
    try:
        yield
    finally:
        model.__class__ = sharded
