"""The DeepSpeed strategy: the engine owns precision, accumulation, clipping and its shards."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tune.plugin import Strategy, TuneError, World, processes, resolve_precision, weights

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
        self.sequence_parallel = settings.sequence_parallel
        self.zero3 = settings.zero_stage == 3  # parameters partitioned across ranks

    def setup(self, ctx) -> World:
        import deepspeed

        started, device = processes.join_world(ctx, "deepspeed")
        deepspeed.init_distributed(
            dist_backend="nccl" if device.startswith("cuda") else "gloo",
            timeout=datetime.timedelta(seconds=self.settings.timeout_s),
        )
        self.precision = resolve_precision(ctx.recipe.train.precision, device)
        self.config = build_config(self.settings, ctx.recipe, started.world_size, self.precision)
        return World(started.rank, started.world_size, started.local_rank, device)

    # -- building the model ------------------------------------------------------------------
    def load_model(self, load, build_empty, checkpoint, ctx):
        """ZeRO-3 with low_memory_load: transformers' DeepSpeed config stays alive for the run,
        so transformers and PEFT know parameters are partitioned from the start (adapter
        creation, resizing, generation), and every rank builds the model partitioned and reads
        its own partitions from the checkpoint's safetensors files. Where it cannot (no local
        safetensors files, keys converted while loading, a missing weight), `load()` runs and
        transformers loads under zero.Init itself. Otherwise every rank loads the whole model
        and deepspeed.initialize partitions it."""
        s = self.settings
        if not (self.zero3 and s.low_memory_load and not ctx.recipe.model.quantize):
            return load()
        from transformers.integrations import HfDeepSpeedConfig

        self._hf_config = HfDeepSpeedConfig(self.config)
        if not self._reads_partitions(checkpoint, ctx):
            return load()
        from tune_plugin_deepspeed.lowmem import build_partitioned, fill_partitions, probe_entries

        entries = probe_entries(build_empty)
        if not ctx.collectives.all_reduce_min(int(entries is not None)):
            ctx.print(
                "deepspeed low-memory load: the checkpoint's safetensors files do not hold every "
                "weight under its own name (keys converted while loading, or missing): loading "
                "the ordinary way, transformers under zero.Init"
            )
            return load()
        model = build_partitioned(build_empty, self.config)
        fill_partitions(model, entries)
        ctx.print(
            f"deepspeed low-memory load: each rank read its ZeRO-3 partition of {len(entries)} "
            "weights from the checkpoint files"
        )
        return model

    def _reads_partitions(self, checkpoint, ctx) -> bool:
        """Whether every rank can read its partitions from the safetensors files in
        `checkpoint` (the same answer on every rank)."""
        wanted = (
            self.settings.offload_params != "nvme"
            and not self.config["zero_optimization"].get("zero_quantized_nontrainable_weights")
            and checkpoint is not None
        )
        if not wanted:
            return False
        # The same on every rank so far: only now ask whether every rank sees the files.
        found = int(bool(weights.weight_files(checkpoint)))
        return bool(ctx.collectives.all_reduce_min(found))

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

    def save_checkpoint(self, model, optimizer, path: Path, ctx) -> None:
        model.save_checkpoint(str(path), tag=TAG, save_latest=False, exclude_frozen_parameters=True)

    def checkpoint_globals(self) -> list[type]:
        """DeepSpeed's own objects in its checkpoint pickles (it reads them back with
        `torch.load(weights_only=False)`, after the core checked them against these): the ZeRO
        optimizers save their loss scaler object (static, or dynamic under fp16) and the ZeRO
        stage as an enum, ZeRO-1/2 and the bf16 optimizer each parameter's slice of the flat
        partition as a `fragment_address`. Found with
        `torch.serialization.get_unsafe_globals_in_checkpoint` on real ZeRO-2 and ZeRO-3
        checkpoints; the model states files need nothing beyond torch's allow-list."""
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

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
        state = model._zero3_consolidated_16bit_state_dict() if self.zero3 else None
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
