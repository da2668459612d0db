"""Loader `unsloth`: FastLanguageModel for loading, LoRA, gradient checkpointing and inference.

Declares `loader = "unsloth"` and, scoped to that loader only, `quantize = "nf4" | "int8"` and
`[[adapt]] method = "lora"`: with another loader those names keep going to the bitsandbytes and
PEFT plugins. Unsloth must be imported before transformers; `tune_run_start` does that first
thing in `tune run`. Without a CUDA GPU the plugin reports so and refuses Unsloth recipes at
validation, before anything loads. No torch or unsloth import at module level.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tune.plugin import Settings, TuneError, hookimpl

LOADER = "unsloth"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class UnslothLoaderSettings(Settings):
    dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="auto lets Unsloth pick"
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


@hookimpl
def tune_provide(provide):
    provide.loader(LOADER, UnslothLoaderSettings, doc="FastLanguageModel (CUDA GPU only)")
    provide.quantization(
        "nf4", UnslothQuantSettings, doc="Unsloth 4-bit loading", for_loader=LOADER
    )
    provide.quantization(
        "int8", UnslothQuantSettings, doc="Unsloth 8-bit loading", for_loader=LOADER
    )
    provide.adapter(
        "lora", UnslothLoraSettings, doc="FastLanguageModel.get_peft_model", for_loader=LOADER
    )


# -- where it can run (no torch) ----------------------------------------------------------------
def gpu_present() -> bool:
    """A CUDA GPU is visible, judged without importing torch (the CLI must start without it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def why_not_here() -> str | None:
    if not gpu_present():
        return "needs a CUDA GPU (Unsloth refuses to import without one)"
    if not unsloth_installed():
        return 'unsloth not installed: pip install "tune-plugin-unsloth[unsloth]"'
    return None


@hookimpl
def tune_plugin_status():
    return why_not_here()


@hookimpl
def tune_check_recipe(recipe):
    if recipe.model.loader != LOADER:
        return
    reason = why_not_here()
    if reason:
        raise TuneError(
            f"[model] loader = 'unsloth' cannot run here: {reason}.",
            where=f"{recipe.path}: [model] loader",
            fix='use loader = "transformers" (same recipe otherwise: tune-plugin-peft and '
            "tune-plugin-bitsandbytes serve lora and nf4 for it), or run on a CUDA machine.",
        )
    if recipe.strategy.name != "single":
        raise TuneError(
            f"Unsloth trains on one GPU; [strategy] name = '{recipe.strategy.name}' is not supported with it.",
            where=f"{recipe.path}: [strategy] name",
            fix='use name = "single", or loader = "transformers" for ddp/deepspeed.',
        )


@hookimpl
def tune_run_start(recipe):
    """Import unsloth before transformers so its patches apply (it warns and is slower otherwise)."""
    if recipe.model.loader != LOADER:
        return
    if "transformers" in sys.modules and "unsloth" not in sys.modules:
        print("tune: warning: transformers was imported before unsloth", file=sys.stderr)
    import unsloth  # noqa: F401  (patches transformers, peft and trl on import)


# -- the work (GPU) -------------------------------------------------------------------------------
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
        "dtype": None if settings.dtype == "auto" else settings.dtype,
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


@hookimpl
def tune_quantization_config(name, settings, ctx):
    return {"unsloth": name}  # Unsloth quantizes while loading; the loader reads [model] quantize


@hookimpl
def tune_prepare_quantized_model(name, settings, model, ctx):
    return model  # FastLanguageModel already prepared it for k-bit training


def _fast_language_model():
    """Unsloth's FastLanguageModel, or a TuneError saying why it cannot be had here."""
    reason = why_not_here()
    if reason:
        raise TuneError(
            f"[model] loader = 'unsloth' cannot train here: {reason}.",
            fix='use loader = "transformers" (tune-plugin-peft and tune-plugin-bitsandbytes '
            "serve lora and nf4 for it), or run on a CUDA machine with unsloth installed.",
        )
    from unsloth import FastLanguageModel

    return FastLanguageModel


@hookimpl
def tune_load_model(name, settings, ctx):
    model, tokenizer = _fast_language_model().from_pretrained(
        **from_pretrained_kwargs(ctx.recipe, settings)
    )
    tokenizer = _with_chat_template(tokenizer, settings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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


@hookimpl
def tune_load_tokenizer(name, settings, ctx):
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


@hookimpl
def tune_load_for_inference(name, settings, dtype, ctx):
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
    return _fast_language_model().get_peft_model(
        model, **get_peft_model_kwargs(ctx.recipe, loader, settings)
    )


@hookimpl
def tune_prepare_generation(name, settings, model, ctx):
    return _fast_language_model().for_inference(model)
