"""Loader `transformers`: hub id, local directory, or the offline `tune:tiny-*` models."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tune.errors import TuneError
from tune.machine.devices import resolve_dtype
from tune.registry.hookspecs import hookimpl

TINY_PREFIX = "tune:"


class TransformersLoaderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on a bf16 GPU, float32 otherwise"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] | None = (
        None
    )
    trust_remote_code: bool = False
    revision: str | None = None
    tokenizer: str | None = Field(None, description="tokenizer path if not the model's own")
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    init_seed: int = Field(0, description="weight seed of tune:tiny-* models")
    local_files_only: bool = False


@hookimpl
def tune_provide(provide):
    provide.loader(
        "transformers",
        TransformersLoaderSettings,
        doc="AutoModelForCausalLM from a hub id, a local dir, or tune:tiny-llama|qwen2|mistral",
    )


def tiny_name(ctx) -> str:
    """`tune:tiny-llama` -> `tiny-llama`, or a TuneError listing the built-in models."""
    from tune.builtin.tiny import ARCHS

    path = ctx.recipe.model.path
    name = path.removeprefix(TINY_PREFIX)
    if name not in ARCHS:
        raise TuneError(
            f"unknown built-in model '{path}'.",
            where=f"{ctx.recipe.path}: [model] path",
            fix=f"use one of {', '.join(TINY_PREFIX + n for n in ARCHS)}.",
        )
    return name


@hookimpl
def tune_load_model(settings: TransformersLoaderSettings, ctx):
    from transformers import AutoTokenizer
    from tune.model.gguf_input import gguf_location, load_model

    recipe = ctx.recipe
    path, gguf = gguf_location(recipe.model, recipe.path)
    if path.startswith(TINY_PREFIX):
        from tune.builtin.tiny import materialize

        path = str(materialize(tiny_name(ctx), settings.config_overrides, settings.init_seed))
        overrides = {}
    else:
        overrides = dict(settings.config_overrides)
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(settings.dtype, ctx.world.device),
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        "local_files_only": settings.local_files_only,
    }
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if ctx.quantization_config is not None:
        kwargs["quantization_config"] = ctx.quantization_config
        if ctx.world.device.startswith("cuda"):
            kwargs["device_map"] = {"": ctx.world.device}
    from tune.contract.strategy import current_strategy

    strategy = current_strategy(ctx)
    # A strategy reading its shard from the files reads `path`'s safetensors as they are: not
    # for GGUF input or a pinned revision (the cache's files may be another revision's).
    ctx.checkpoint = None if gguf or settings.revision else path
    try:
        with strategy.loading(ctx) if strategy else contextlib.nullcontext():
            if overrides or (strategy and not strategy.loads_weights(ctx)):
                kwargs["config"] = _config(path, settings, overrides, gguf)
            model = None
            if strategy and not strategy.loads_weights(ctx):
                model = strategy.empty_model(lambda: _bare_model(kwargs), ctx)
                if model is not None:
                    _generation_defaults(model, path)
            if model is None:
                model = load_model(path, kwargs, gguf)
        tokenizer = AutoTokenizer.from_pretrained(
            settings.tokenizer or path,
            trust_remote_code=settings.trust_remote_code,
            revision=None if settings.tokenizer else settings.revision,
            **({} if settings.tokenizer else gguf),
        )
    except OSError as exc:
        raise TuneError(
            f"cannot load model '{recipe.model.path}': {str(exc).splitlines()[0]}",
            where=f"{recipe.path}: [model] path",
            fix="check the hub id or local path (and HF_TOKEN for gated models), or use "
            "tune:tiny-llama offline.",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if recipe.train.gradient_checkpointing:
        # transformers v5 renamed it (and its kwargs); the old name is what v4 has.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
    return model, tokenizer


def _config(
    path: str,
    settings: TransformersLoaderSettings,
    overrides: dict[str, Any],
    gguf: dict[str, str] | None = None,
) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        path,
        trust_remote_code=settings.trust_remote_code,
        revision=settings.revision,
        **(gguf or {}),
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _generation_defaults(model: Any, path: str) -> None:
    """The checkpoint's generation_config.json (eos ids, sampling defaults), which
    from_pretrained reads and a model built from its config alone lacks; saved with final/."""
    from transformers import GenerationConfig

    with contextlib.suppress(OSError):  # none in the checkpoint: keep the config's defaults
        model.generation_config = GenerationConfig.from_pretrained(path)


def _bare_model(kwargs: dict[str, Any]) -> Any:
    """The architecture alone, built from its config without reading any weight; the strategy
    chooses where (`Strategy.empty_model`: the meta device by default)."""
    from transformers import AutoModelForCausalLM

    if "quantization_config" in kwargs:
        raise RuntimeError("a strategy asked for a model without weights of a quantized load")
    extra = {
        k: kwargs[k] for k in ("dtype", "trust_remote_code", "attn_implementation") if k in kwargs
    }
    return AutoModelForCausalLM.from_config(kwargs["config"], **extra)


@hookimpl
def tune_load_tokenizer(settings: TransformersLoaderSettings, ctx):
    from transformers import AutoTokenizer
    from tune.model.gguf_input import gguf_location

    path, gguf = gguf_location(ctx.recipe.model, ctx.recipe.path)
    if path.startswith(TINY_PREFIX) and not settings.tokenizer:
        from tune.builtin.tiny import load_tokenizer

        tokenizer = load_tokenizer(tiny_name(ctx))
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            settings.tokenizer or path,
            trust_remote_code=settings.trust_remote_code,
            revision=None if settings.tokenizer else settings.revision,
            **({} if settings.tokenizer else gguf),
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
