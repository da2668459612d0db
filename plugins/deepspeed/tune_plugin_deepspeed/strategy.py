"""The DeepSpeed strategy: the engine owns precision, accumulation, clipping and its shards."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tune.plugin import Strategy, TuneError, World, join_world, resolve_precision

TAG = "deepspeed"
# Keys tune fills from [train] and the world size; a raw JSON may not set them differently.
OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def build_config(settings, recipe, world_size: int, precision: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if settings.config:
        path = Path(settings.config)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TuneError(
                f"cannot read the DeepSpeed config: {exc}.",
                where=f"{recipe.path}: [strategy] config",
                fix="point config at a readable DeepSpeed JSON file.",
            ) from None
    train = recipe.train
    wanted = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
    }
    for key in OWNED:
        if key in cfg and cfg[key] not in ("auto", wanted[key]):
            raise TuneError(
                f"the DeepSpeed config sets {key} = {cfg[key]}, but the recipe and world size "
                f"give {wanted[key]}.",
                where=f"{settings.config}",
                fix='remove it from the JSON (or set it to "auto"); tune fills batch sizes from '
                "[train] micro_batch_size, grad_accum and the number of processes.",
            )
    cfg.update(wanted)
    zero = cfg.setdefault("zero_optimization", {})
    zero["stage"] = settings.zero_stage
    zero["contiguous_gradients"] = settings.contiguous_gradients
    if settings.overlap_comm is not None:
        zero["overlap_comm"] = settings.overlap_comm
    if settings.reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = settings.reduce_bucket_size
    for key, device in (
        ("offload_optimizer", settings.offload_optimizer),
        ("offload_param", settings.offload_params),
    ):
        if device != "none":
            zero[key] = {"device": device, "pin_memory": torch.cuda.is_available()}
            if device == "nvme":
                zero[key]["nvme_path"] = settings.nvme_path
    if settings.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    cfg["gradient_clipping"] = train.max_grad_norm
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": precision == "bf16"}
    cfg["fp16"] = {**cfg.get("fp16", {}), "enabled": precision == "fp16"}
    # tune builds the optimizer (any tune optimizer plugin), so DeepSpeed must accept it.
    cfg["zero_allow_untested_optimizer"] = True
    cfg["zero_force_ds_cpu_optimizer"] = False
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.sharded_params = settings.zero_stage == 3

    def setup(self, ctx) -> World:
        import deepspeed

        started, device = join_world(ctx, "deepspeed")
        deepspeed.init_distributed(
            dist_backend="nccl" if device.startswith("cuda") else "gloo",
            timeout=datetime.timedelta(seconds=self.settings.timeout_s),
        )
        self.precision = resolve_precision(ctx.recipe.train.precision, device)
        self.config = build_config(self.settings, ctx.recipe, started.world_size, self.precision)
        return World(started.rank, started.world_size, started.local_rank, device)

    def loading(self, ctx):
        """ZeRO-3 with low_memory_load: transformers' DeepSpeed config stays alive for the run,
        so transformers and PEFT know parameters are partitioned from the start (adapter
        creation, resizing, generation). Off: every rank loads the whole model and
        deepspeed.initialize partitions it."""
        if self.sharded_params and self.settings.low_memory_load and not ctx.recipe.model.quantize:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_config = HfDeepSpeedConfig(self.config)
        return contextlib.nullcontext()

    def loads_weights(self, ctx) -> bool:
        """False when every rank can read its partitions from the checkpoint's safetensors
        files (`empty_model` does); otherwise transformers loads under zero.Init itself."""
        return not self._reads_partitions(ctx)

    def _reads_partitions(self, ctx) -> bool:
        if not hasattr(self, "_partitioned_load"):
            from tune.plugin import weight_files

            s = self.settings
            wanted = (
                self.sharded_params
                and s.low_memory_load
                and not ctx.recipe.model.quantize
                and s.offload_params != "nvme"
                and not self.config["zero_optimization"].get("zero_quantized_nontrainable_weights")
                and ctx.checkpoint is not None
            )
            able = False
            if wanted:  # the same on every rank: only then ask whether every rank sees the files
                found = torch.tensor([int(bool(weight_files(ctx.checkpoint)))])
                able = bool(self._all_min(found))
            self._partitioned_load = able
        return self._partitioned_load

    def empty_model(self, build, ctx):
        """Every rank builds the model partitioned and reads its partitions from the files; None
        (load the ordinary way) when the files do not hold every weight under its own name."""
        from tune_plugin_deepspeed.lowmem import build_partitioned, fill_partitions, probe_entries

        entries = probe_entries(build)
        if not self._all_min(torch.tensor([int(entries is not None)])):
            ctx.print(
                "deepspeed low-memory load: the checkpoint's safetensors files do not hold every "
                "weight under its own name (keys converted while loading, or missing): loading "
                "the ordinary way, transformers under zero.Init"
            )
            return None
        model = build_partitioned(build, self.config)
        fill_partitions(model, entries)
        ctx.print(
            f"deepspeed low-memory load: each rank read its ZeRO-3 partition of {len(entries)} "
            "weights from the checkpoint files"
        )
        return model

    def _reduce_device(self) -> str:
        """Where collectives' tensors live: NCCL takes CUDA tensors only."""
        return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"

    def _all_min(self, tensor) -> int:
        tensor = tensor.to(self._reduce_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def prepare(self, model, optimizer, ctx):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config
        )
        return engine, ds_optimizer

    def unwrap(self, model):
        return getattr(model, "module", model)

    def autocast(self, ctx):
        return contextlib.nullcontext()  # the engine runs the module in its configured precision

    def accumulate(self, model, is_last: bool):
        model.set_gradient_accumulation_boundary(is_last)
        return contextlib.nullcontext()

    def backward(self, loss, model) -> None:
        # tune already divided by the step's target tokens: no extra 1/grad_accum.
        model.backward(loss, scale_wrt_gas=False)

    def step(self, model, optimizer, max_grad_norm: float) -> float | None:
        model.step()  # clip (gradient_clipping), step and zero at the boundary
        norm = model.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def all_reduce_sum(self, value: float) -> float:
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())

    def barrier(self) -> None:
        dist.barrier()

    def save_checkpoint(self, model, optimizer, path: Path, ctx) -> None:
        model.save_checkpoint(str(path), tag=TAG, save_latest=False, exclude_frozen_parameters=True)

    def load_checkpoint(self, model, optimizer, path: Path, ctx) -> None:
        loaded, _ = model.load_checkpoint(
            str(path),
            tag=TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=False,  # frozen base weights are not in the checkpoint
        )
        if loaded is None:
            raise TuneError(
                "no DeepSpeed checkpoint in this directory.",
                where=str(path),
                fix="resume with the same [strategy] that wrote the checkpoint.",
            )

    def save_final(self, model, tokenizer, path: Path, ctx) -> None:
        """Consolidate ZeRO-3 shards into one 16-bit state dict; save a plain model or adapter."""
        state = model._zero3_consolidated_16bit_state_dict() if self.sharded_params else None
        if not ctx.world.is_main:
            return
        module = self.unwrap(model)
        if state is not None:
            module.save_pretrained(str(path), state_dict=state)
        else:
            module.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))

    def teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
