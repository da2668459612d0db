"""Loader `unsloth`: FastLanguageModel for loading, LoRA, gradient checkpointing and inference.

Declares `loader = "unsloth"` and, scoped to that loader only, `quantize = "nf4" | "int8"` and
`[[adapt]] method = "lora"`: with another loader those names keep going to the bitsandbytes and
PEFT plugins. Unsloth must be imported before transformers: the loader declares
`preload=("unsloth",)`, which `tune run` imports first. Unsloth trains in one process and swaps
its own kernels in (declared capabilities: the core refuses multi-process strategies and other
kernel patches such as Liger). Unsloth >= 2026.10.9 trains on a GPU or, without one, on its CPU
backend; STATUS says which, and where neither can run (older Unsloth without a GPU, the CPU
fallback turned off) Unsloth recipes are refused at validation, before anything loads. No torch
or unsloth import at module level.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tune.plugin import Capabilities, Load, Loaded, Quantization, Settings, TuneError, hookimpl

TUNE_API = ">=2,<3"

LOADER = "unsloth"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class UnslothLoaderSettings(Settings):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto lets Unsloth pick (bfloat16 where supported)"
    )
    full_finetuning: bool = False
    trust_remote_code: bool = False
    revision: str | None = None
    chat_template: str | None = Field(
        None, description="an Unsloth chat template name (e.g. llama-3.1), via get_chat_template"
    )
    gradient_checkpointing: Literal["unsloth", "true", "false"] = Field(
        "unsloth", description="unsloth = Unsloth's offloaded checkpointing"
    )
    random_state: int | None = Field(None, description="LoRA init seed; None = [train] seed")


class UnslothQuantSettings(Settings):
    """Unsloth quantizes while loading: no keys."""


class UnslothLoraSettings(Settings):
    r: int = Field(16, ge=1)
    alpha: float | None = Field(None, description="lora_alpha; None = r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="0 is Unsloth's optimized path")
    bias: Literal["none", "all", "lora_only"] = "none"
    targets: Literal["all-linear"] | list[str] | None = None
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    layers_to_transform: list[int] | None = None


# Unsloth's own Triton kernels replace these parts of the model it loads.
KERNELS = ("rms_norm", "rope", "swiglu", "cross_entropy")


@hookimpl
def tune_provide(provide):
    from tune_plugin_unsloth import memory

    provide.loader(
        LOADER,
        UnslothLoaderSettings,
        doc="FastLanguageModel (GPU, or CPU from Unsloth 2026.10.9)",
        preload=("unsloth",),
        capabilities=Capabilities(
            processes="one",
            replaces_kernels=KERNELS,
            why={
                "processes": "Unsloth trains in one process",
                "replaces_kernels": "Unsloth patches these layers with its own kernels",
            },
        ),
    )
    provide.quantization(
        "nf4",
        UnslothQuantSettings,
        doc="Unsloth 4-bit loading",
        for_loader=LOADER,
        build=UnslothQuantization,
        estimate=memory.ESTIMATES["nf4"],
    )
    provide.quantization(
        "int8",
        UnslothQuantSettings,
        doc="Unsloth 8-bit loading",
        for_loader=LOADER,
        build=UnslothQuantization,
        estimate=memory.ESTIMATES["int8"],
    )
    provide.adapter(
        "lora",
        UnslothLoraSettings,
        doc="FastLanguageModel.get_peft_model",
        for_loader=LOADER,
        estimate=memory.ESTIMATES["lora"],
    )


# -- where it can run (no torch) ----------------------------------------------------------------
# The first release whose FastLanguageModel trains without an accelerator (stock transformers +
# PEFT + TRL under Unsloth's dtype, 4-bit and chunked cross-entropy choices).
CPU_BACKEND_SINCE = "2026.10.9"
INSTALL = 'pip install "tune-plugin-unsloth[unsloth]"'


def _hidden(*keys: str) -> bool:
    return any("".join(os.environ.get(k, "x").split()) in ("", "-1") for k in keys)


def gpu_present() -> str | None:
    """The GPU Unsloth would train on ("NVIDIA", "AMD"), judged without importing torch (the CLI
    must start without it); None when there is none or it is hidden."""
    if not _hidden("CUDA_VISIBLE_DEVICES") and (
        Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    ):
        return "NVIDIA"
    amd_masks = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
    if not _hidden(*amd_masks) and Path("/dev/kfd").exists():
        return "AMD"
    return None


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def unsloth_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("unsloth")
    except metadata.PackageNotFoundError:
        return None


def has_cpu_backend(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) >= Version(CPU_BACKEND_SINCE)
    except InvalidVersion:
        return False


def backend_here() -> tuple[str | None, str]:
    """("gpu" | "cpu" | None, one line saying what this Unsloth does here, or why it cannot).

    Mirrors Unsloth's own choice (unsloth_zoo.device_type) without importing torch.
    """
    version = unsloth_version() if unsloth_installed() else None
    if version is None:
        return None, f"unsloth not installed: {INSTALL} (GPU or CPU, see the plugin's README)"
    gpu = gpu_present()
    if gpu and os.environ.get("UNSLOTH_FORCE_CPU", "0") != "1":
        return "gpu", f"ok: Unsloth {version} on the {gpu} GPU (fused kernels, 4/8-bit loading)"
    if not has_cpu_backend(version):
        return None, (
            f"needs a GPU: Unsloth {version} has no CPU backend "
            f'(pip install "unsloth>={CPU_BACKEND_SINCE}" trains on CPU)'
        )
    if os.environ.get("UNSLOTH_DISABLE_CPU_FALLBACK", "0") == "1":
        return None, "needs a GPU: UNSLOTH_DISABLE_CPU_FALLBACK=1 turns Unsloth's CPU backend off"
    return "cpu", (
        f"ok: Unsloth {version} CPU backend, no GPU here (stock transformers + PEFT; "
        "nf4 through bitsandbytes' CPU kernels where they run, else 16-bit; no fused GPU kernels)"
    )


def why_not_here() -> str | None:
    """Why Unsloth cannot train here, or None."""
    backend, line = backend_here()
    return None if backend else line


@hookimpl
def tune_plugin_status():
    """What Unsloth does here; a line not starting with "ok" makes the core refuse recipes with
    `loader = "unsloth"` at validation, before anything loads."""
    reason = why_not_here()
    if reason:
        return reason
    line = backend_here()[1]
    return line if line.startswith("ok") else "ok"


# -- the work (a GPU, or Unsloth's CPU backend) ---------------------------------------------------
def _torch():
    import torch

    return torch


def from_pretrained_kwargs(recipe, settings: UnslothLoaderSettings) -> dict[str, Any]:
    """FastLanguageModel.from_pretrained arguments for this recipe (pure: tested on CPU)."""
    quantize = recipe.model.quantize
    checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[
        settings.gradient_checkpointing
    ]
    if not recipe.train.gradient_checkpointing:
        checkpointing = False
    return {
        "model_name": recipe.model.path,
        "max_seq_length": recipe.model.max_seq_len,
        # A torch dtype, not its name: Unsloth's 8-bit and full fine-tuning paths assert one.
        "dtype": None if settings.dtype == "auto" else getattr(_torch(), settings.dtype),
        "load_in_4bit": quantize == "nf4",
        "load_in_8bit": quantize == "int8",
        "full_finetuning": settings.full_finetuning,
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        "token": os.environ.get("HF_TOKEN"),
        "use_gradient_checkpointing": checkpointing,
        "random_state": settings.random_state
        if settings.random_state is not None
        else recipe.train.seed,
    }


def get_peft_model_kwargs(
    recipe, loader: UnslothLoaderSettings, lora: UnslothLoraSettings
) -> dict[str, Any]:
    """FastLanguageModel.get_peft_model arguments (pure: tested on CPU)."""
    targets = ALL_LINEAR if lora.targets in (None, "all-linear") else lora.targets
    kwargs = from_pretrained_kwargs(recipe, loader)
    return {
        "r": lora.r,
        "target_modules": targets,
        "lora_alpha": lora.alpha if lora.alpha is not None else lora.r,
        "lora_dropout": lora.dropout,
        "bias": lora.bias,
        "use_gradient_checkpointing": kwargs["use_gradient_checkpointing"],
        "random_state": kwargs["random_state"],
        "use_rslora": lora.use_rslora,
        "modules_to_save": lora.modules_to_save,
        "layers_to_transform": lora.layers_to_transform,
        "max_seq_length": recipe.model.max_seq_len,
    }


class UnslothQuantization(Quantization):
    """Unsloth quantizes while loading (the loader reads [model] quantize) and prepares the
    k-bit model itself: nothing for the core to pass or do."""

    def config(self):
        return {"unsloth": self.ctx.recipe.model.quantize}


def _fast_language_model():
    """Unsloth's FastLanguageModel, or a TuneError saying why it cannot be had here."""
    reason = why_not_here()
    if reason:
        raise TuneError(
            f"[model] loader = 'unsloth' cannot train here: {reason}.",
            fix='use loader = "transformers" (tune-plugin-peft and tune-plugin-bitsandbytes '
            "serve lora and nf4 for it), or install unsloth (>= "
            f"{CPU_BACKEND_SINCE} also trains on CPU) or run on a GPU machine.",
        )
    from unsloth import FastLanguageModel

    return FastLanguageModel


@hookimpl
def tune_load_model(name, settings, ctx, want: Load):
    if not want.weights:
        return None, _tokenizer_only(settings, ctx)
    if not want.training:
        return _base_for_inference(settings, want.dtype, ctx)
    model, tokenizer = _fast_language_model().from_pretrained(
        **from_pretrained_kwargs(ctx.recipe, settings)
    )
    fit_tune_batches(model)
    tokenizer = _with_chat_template(tokenizer, settings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model, tokenizer, prepare_generation=_for_inference)


def _for_inference(model):
    """The closing samples in Unsloth's fast inference mode."""
    return _fast_language_model().for_inference(model)


def _with_chat_template(tokenizer, settings: UnslothLoaderSettings):
    if not settings.chat_template:
        return tokenizer
    if not unsloth_installed():
        raise TuneError(
            f"chat_template = '{settings.chat_template}' is one of Unsloth's templates, and "
            "unsloth is not installed here.",
            where="[model] chat_template",
            fix='pip install "tune-plugin-unsloth[unsloth]", or set [data] template instead.',
        )
    from unsloth.chat_templates import get_chat_template

    return get_chat_template(tokenizer, chat_template=settings.chat_template)


def _plain_tokenizer(settings: UnslothLoaderSettings, path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=settings.trust_remote_code, revision=settings.revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenizer_only(settings, ctx):
    """The model's own tokenizer (what FastLanguageModel returns), without loading weights or
    needing a GPU: `tune data preview` works anywhere."""
    path = ctx.recipe.model.path
    try:
        tokenizer = _plain_tokenizer(settings, path)
    except OSError as exc:
        raise TuneError(
            f"cannot load the tokenizer of '{path}': {str(exc).splitlines()[0]}",
            where=f"{ctx.recipe.path}: [model] path",
            fix="check the hub id or local path (and HF_TOKEN for gated models).",
        ) from None
    return _with_chat_template(tokenizer, settings)


def _base_for_inference(settings, dtype, ctx):
    """For merge and chat: the 16-bit base through plain transformers. Merging a LoRA adapter
    needs no Unsloth kernels, so a run trained on a GPU merges on any machine."""
    import torch
    from transformers import AutoModelForCausalLM

    path = ctx.recipe.model.path
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=getattr(torch, dtype),
        trust_remote_code=settings.trust_remote_code,
        revision=settings.revision,
    )
    return model, _plain_tokenizer(settings, path)


@hookimpl
def tune_merge_adapter(name, settings, model, adapter_dir, ctx):
    """Unsloth saves a standard PEFT LoRA adapter: PEFT merges it into the base."""
    import peft

    return peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    loader = ctx.recipe.selected("loader").settings
    model = _fast_language_model().get_peft_model(
        model, **get_peft_model_kwargs(ctx.recipe, loader, settings)
    )
    return fit_tune_batches(model)


# -- tune's batches, as Unsloth expects them -------------------------------------------------------
def _as_unsloth_expects(module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """Forward pre-hook: tune's micro-batch reshaped into what Unsloth handles.

    - A packed micro-batch (position ids, no attention mask) of several rows becomes one row:
      Unsloth finds example boundaries (restarting position ids) only in a one-row batch, and
      would let the examples of a row attend to each other otherwise. Exact: each example's first
      label is already ignored, so no target crosses the seam between rows.
    - `num_items_in_batch` becomes a tensor, as the Trainer passes it (unsloth_zoo calls tensor
      methods on it); the normalization itself is unchanged.
    """
    torch = _torch()
    ids = kwargs.get("input_ids")
    packed = (
        ids is not None
        and ids.dim() == 2
        and ids.shape[0] > 1
        and kwargs.get("position_ids") is not None
        and kwargs.get("attention_mask") is None
        and kwargs.get("past_key_values") is None
    )
    if packed:
        for key in ("input_ids", "labels", "position_ids"):
            if kwargs.get(key) is not None:
                kwargs[key] = kwargs[key].reshape(1, -1)
    count = kwargs.get("num_items_in_batch")
    if count is not None and not torch.is_tensor(count):
        device = ids.device if ids is not None else None
        kwargs["num_items_in_batch"] = torch.tensor(count, device=device)
    return args, kwargs


def fit_tune_batches(model):
    """Install `_as_unsloth_expects` on the module tune calls (once per module)."""
    # vars(), not getattr: a PeftModel forwards attribute reads to the model it wraps.
    if not vars(model).get("_tune_unsloth_hook", False):
        model.register_forward_pre_hook(_as_unsloth_expects, with_kwargs=True)
        model._tune_unsloth_hook = True
    return model
