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
        doc="AutoModelForCausalLM from a hub id, a local dir, or tune:tiny-* (llama, qwen2, mistral, qwen3-moe, mixtral, gpt-oss)",
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
    if recipe.model.rope_scaling is not None:
        config = kwargs.get("config") or _config(path, settings, overrides, gguf)
        kwargs["config"] = apply_rope_scaling(config, recipe)

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


def apply_rope_scaling(config: Any, recipe: Any) -> Any:
    """`[model] rope_scaling` written into `config` before the model is built (its rotary
    embedding reads it at construction), checked against the config first.

    transformers 5 keeps RoPE in `config.rope_parameters` (rope_type, rope_theta and the
    scaling's fields); 4.x in `config.rope_scaling`. max_position_embeddings becomes original x
    factor, except for `dynamic`, which reads it as the original length and scales beyond it.
    """
    from tune.plugin import model_files

    where = f"{recipe.path}: [model] rope_scaling"
    if _has_scaling(config, recipe.model.rope_scaling):
        return config  # a model saved by a run with this scaling (merge, chat of a full run)
    params, reach = model_files.rope_scaling_parameters(
        recipe.model.rope_scaling, config.to_dict(), str(recipe.path)
    )
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:  # pragma: no cover - a transformers without the table
        ROPE_INIT_FUNCTIONS = {params["rope_type"]: None}
    if params["rope_type"] not in ROPE_INIT_FUNCTIONS:
        raise TuneError(
            f"rope_scaling type {params['rope_type']!r} is not supported by this transformers.",
            where=where,
            fix=f"use one of {', '.join(sorted(ROPE_INIT_FUNCTIONS))}, or upgrade transformers.",
        )
    if reach is not None and recipe.model.max_seq_len > reach:
        raise TuneError(
            f"max_seq_len = {recipe.model.max_seq_len:,} is beyond the {reach:,} positions "
            "that rope_scaling reaches (the model's original positions x factor).",
            where=f"{recipe.path}: [model] max_seq_len",
            fix=f"use max_seq_len <= {reach:,}, or a larger factor in [model] rope_scaling.",
        )
    if hasattr(config, "rope_parameters"):
        old = config.rope_parameters if isinstance(config.rope_parameters, dict) else {}
        kept = {k: old[k] for k in ("rope_theta", "partial_rotary_factor") if k in old}
        if "rope_theta" not in kept and getattr(config, "rope_theta", None) is not None:
            kept["rope_theta"] = config.rope_theta
        config.rope_parameters = {**kept, **params}
    else:  # transformers 4.x
        config.rope_scaling = dict(params)
    if params["rope_type"] != "dynamic" and reach is not None:
        config.max_position_embeddings = reach
    for step in ("standardize_rope_params", "validate_rope"):
        if callable(getattr(config, step, None)):
            try:
                getattr(config, step)()
            except (KeyError, ValueError, TypeError) as exc:
                raise TuneError(
                    f"transformers refuses rope_scaling {params}: {exc}",
                    where=where,
                    fix="correct the table's values (see transformers' RoPE parameters).",
                ) from None
    return config


def _has_scaling(config: Any, spec: dict[str, Any]) -> bool:
    """The config already holds this scaling: its type and every value the recipe gives."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(rope, dict) or not isinstance(spec, dict):
        return False
    kind = spec.get("type", spec.get("rope_type"))
    if rope.get("rope_type", rope.get("type")) != kind:
        return False
    given = {k: v for k, v in spec.items() if k not in ("type", "rope_type")}
    return all(rope.get(k) == v for k, v in given.items())


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
