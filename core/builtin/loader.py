"""Loader `transformers`: hub id, local directory, or the offline `tune:tiny-*` models."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import Field
from tune.plugin import Load, Settings, TuneError, hookimpl, resolve_dtype

TINY_PREFIX = "tune:"


class TransformersLoaderSettings(Settings):
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
def tune_load_model(settings: TransformersLoaderSettings, ctx, want: Load):
    if not want.weights:
        return None, _tokenizer(settings, ctx)
    from tune.builtin.gguf_input import gguf_location, load_model

    recipe = ctx.recipe
    path, gguf = gguf_location(recipe.model, recipe.path)
    if path.startswith(TINY_PREFIX):
        from tune.builtin.tiny import materialize

        path = str(materialize(tiny_name(ctx), settings.config_overrides, settings.init_seed))
        overrides = {}
    else:
        overrides = dict(settings.config_overrides)
    check_local_files(path, settings, recipe)
    dtype = want.dtype if not want.training and want.dtype else settings.dtype
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype, ctx.world.device),
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        "local_files_only": settings.local_files_only,
    }
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if want.training and want.quantization is not None:
        kwargs["quantization_config"] = want.quantization
        if ctx.world.device.startswith("cuda"):
            kwargs["device_map"] = {"": ctx.world.device}
    if overrides:
        kwargs["config"] = _config(path, settings, overrides, gguf)

    def build_empty() -> Any:
        """The architecture from its config, no weight read (a sharding strategy's rank)."""
        config = kwargs.get("config") or _config(path, settings, overrides, gguf)
        model = _bare_model({**kwargs, "config": config})
        _generation_defaults(model, path)
        return model

    strategy = ctx.strategy if want.training else None
    # A strategy reading its shard from the files reads `path`'s safetensors as they are: not
    # for GGUF input or a pinned revision (the cache's files may be another revision's).
    checkpoint = None if gguf or settings.revision else path
    try:
        if strategy is not None:
            model = strategy.load_model(
                lambda: load_model(path, kwargs, gguf), build_empty, checkpoint, ctx
            )
        else:
            model = load_model(path, kwargs, gguf)
        tokenizer = _auto_tokenizer(settings, path, gguf)
    except OSError as exc:
        raise TuneError(
            f"cannot load model '{recipe.model.path}': {str(exc).splitlines()[0]}",
            where=f"{recipe.path}: [model] path",
            fix="check the hub id or local path (and HF_TOKEN for gated models), or use "
            "tune:tiny-llama offline.",
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if want.training and recipe.train.gradient_checkpointing:
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
    chooses where (`Strategy.load_model`)."""
    from transformers import AutoModelForCausalLM

    if "quantization_config" in kwargs:
        raise RuntimeError("a strategy asked for a model without weights of a quantized load")
    extra = {
        k: kwargs[k] for k in ("dtype", "trust_remote_code", "attn_implementation") if k in kwargs
    }
    return AutoModelForCausalLM.from_config(kwargs["config"], **extra)


def check_local_files(path: str, settings: TransformersLoaderSettings, recipe: Any) -> None:
    """A local model (and tokenizer) folder checked before transformers reads it."""
    from pathlib import Path

    from tune.plugin import model_files

    folder = Path(path)
    if folder.is_dir():
        model_files.check_folder(folder)
    if settings.tokenizer and Path(settings.tokenizer).is_dir():
        model_files.check_tokenizer_files(Path(settings.tokenizer))


def _auto_tokenizer(settings: TransformersLoaderSettings, path: str, gguf: dict) -> Any:
    """The model's tokenizer (or the one `tokenizer` names); files it cannot read are one
    paragraph naming them (the tokenizers library raises plain Exceptions for a damaged file)."""
    from transformers import AutoTokenizer

    source = settings.tokenizer or path
    try:
        return AutoTokenizer.from_pretrained(
            source,
            trust_remote_code=settings.trust_remote_code,
            revision=None if settings.tokenizer else settings.revision,
            **({} if settings.tokenizer else gguf),
        )
    except OSError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise TuneError(
            f"the tokenizer of '{source}' cannot be read ({type(exc).__name__}: "
            f"{text[0][:200] if text else ''}).",
            where=f"{source}",
            fix="replace tokenizer.json / tokenizer_config.json with intact copies (download "
            "them again, or copy them from the base model).",
        ) from None


def _tokenizer(settings: TransformersLoaderSettings, ctx) -> Any:
    """The tokenizer alone (`tune data preview/stats`): no weights read."""
    from tune.builtin.gguf_input import gguf_location

    path, gguf = gguf_location(ctx.recipe.model, ctx.recipe.path)
    check_local_files(path, settings, ctx.recipe)
    if path.startswith(TINY_PREFIX) and not settings.tokenizer:
        from tune.builtin.tiny import load_tokenizer

        tokenizer = load_tokenizer(tiny_name(ctx))
    else:
        tokenizer = _auto_tokenizer(settings, path, gguf)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
