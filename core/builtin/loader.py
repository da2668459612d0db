"""Loader `transformers`: hub id, local directory, or the offline `tune:tiny-*` models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tune.devices import resolve_dtype
from tune.errors import TuneError
from tune.hookspecs import hookimpl

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = ctx.recipe
    path = recipe.model.path
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
    if overrides:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            path, trust_remote_code=settings.trust_remote_code, revision=settings.revision
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        kwargs["config"] = config
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            settings.tokenizer or path,
            trust_remote_code=settings.trust_remote_code,
            revision=None if settings.tokenizer else settings.revision,
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


@hookimpl
def tune_load_tokenizer(settings: TransformersLoaderSettings, ctx):
    from transformers import AutoTokenizer

    path = ctx.recipe.model.path
    if path.startswith(TINY_PREFIX) and not settings.tokenizer:
        from tune.builtin.tiny import load_tokenizer

        tokenizer = load_tokenizer(tiny_name(ctx))
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            settings.tokenizer or path,
            trust_remote_code=settings.trust_remote_code,
            revision=None if settings.tokenizer else settings.revision,
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
