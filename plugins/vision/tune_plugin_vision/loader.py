"""Loader `vision`: an image-text-to-text model (`AutoModelForImageTextToText`) and its
processor (`AutoProcessor`), from a hub id, a local folder or `tune:tiny-qwen2-vl|tiny-qwen2.5-vl|tiny-llava`.

The tokenizer handed to the core is the processor's own, with the processor attached as
`image_text_processor`: the `vision_chat` format renders and tokenizes through it, and the
core keeps using a plain tokenizer (padding id, saving, `tune chat`). Quantization and
adapters apply to the model as the loader returns it; PEFT targets such as q_proj/v_proj name
only the language model's layers (the vision towers call theirs qkv/proj, fc1/fc2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tune.plugin import Load, Settings, TuneError, resolve_dtype

from .tiny import PREFIX, TINY, materialize, tiny_name

Part = Literal["vision", "projector", "language"]

# Parameter-name patterns of the parts of the families transformers ships (Qwen2/2.5/3-VL,
# LLaVA and LLaVA-NeXT, Gemma 3, Idefics3/SmolVLM, PaliGemma, Mllama ...).
PROJECTOR = re.compile(r"(multi_modal_projector|visual\.merger|\.connector\.|mm_projector)")
VISION = re.compile(r"(visual\.|vision_tower|vision_model|vision_encoder|image_encoder)")


class VisionLoaderSettings(Settings):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on a bf16 GPU, float32 otherwise"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] | None = (
        None
    )
    trust_remote_code: bool = False
    revision: str | None = None
    local_files_only: bool = False
    config_overrides: dict[str, Any] = Field(
        default_factory=dict, description="tiny models: text_config / vision_config keys"
    )
    init_seed: int = Field(0, description="weight seed of tune:tiny-* models")
    freeze: list[Part] = Field(
        default_factory=lambda: ["vision", "projector"],
        description="parts not trained in a full fine-tune (LLaMA-Factory's defaults: the "
        "vision tower and the projector); [] trains everything",
    )


def part_of(name: str) -> Part:
    """Which part of a vision-language model a parameter belongs to."""
    if PROJECTOR.search(name):
        return "projector"
    if VISION.search(name):
        return "vision"
    return "language"


def resolve_path(settings: VisionLoaderSettings, ctx: Any) -> str:
    return model_folder(settings, str(ctx.recipe.model.path), Path(ctx.recipe.path))


def model_folder(settings: VisionLoaderSettings, path: str, recipe_path: Path) -> str:
    """A local folder (tiny models written on first use), or the hub id as given."""
    if path.startswith(PREFIX):
        name = tiny_name(path)
        if name is None:
            raise TuneError(
                f"unknown built-in vision model '{path}'.",
                where=f"{recipe_path}: [model] path",
                fix=f"use one of {', '.join(PREFIX + n for n in TINY)}.",
            )
        return str(materialize(name, settings.config_overrides, settings.init_seed))
    local = Path(path).expanduser()
    if not local.is_absolute() and (recipe_path.parent / local).exists():
        local = recipe_path.parent / local
    if local.is_dir():
        from tune.plugin import model_files

        model_files.check_folder(local)
        return str(local)
    return path


def _hub(settings: VisionLoaderSettings) -> dict[str, Any]:
    return {
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.revision,
        "local_files_only": settings.local_files_only,
    }


def check_image_model(path: str, settings: VisionLoaderSettings, ctx: Any) -> Any:
    """The model's config, or one paragraph when it is not an image-text-to-text model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    where = f"{ctx.recipe.path}: [model] path"
    try:
        config = AutoConfig.from_pretrained(path, **_hub(settings))
    except (OSError, ValueError) as exc:
        raise TuneError(
            f"cannot read the config of '{ctx.recipe.model.path}': {str(exc).splitlines()[0]}",
            where=where,
            fix="check the hub id or local path (and HF_TOKEN for gated models), or use "
            "tune:tiny-qwen2-vl offline.",
        ) from None
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise TuneError(
            f"'{ctx.recipe.model.path}' is a '{config.model_type}' model, which reads no images: "
            'loader = "vision" needs an image-text-to-text model.',
            where=where,
            fix="use a vision-language checkpoint (Qwen2-VL, Qwen2.5-VL, LLaVA, Gemma 3, SmolVLM, "
            '...), or for a text-only model drop loader = "vision" and use a text format.',
        )
    return config


def load_processor_for(path: str, settings: VisionLoaderSettings) -> Any:
    from .processors import load_processor

    processor = load_processor(path, **_hub(settings))
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None) and isinstance(processor.chat_template, str):
        tokenizer.chat_template = processor.chat_template  # `tune chat` renders text through it
    tokenizer.image_text_processor = processor
    return tokenizer


def load(settings: VisionLoaderSettings, ctx: Any, want: Load) -> tuple[Any, Any]:
    path = resolve_path(settings, ctx)
    config = check_image_model(path, settings, ctx)
    tokenizer = load_processor_for(path, settings)
    if not want.weights:
        return None, tokenizer
    from transformers import AutoModelForImageTextToText

    dtype = want.dtype if not want.training and want.dtype else settings.dtype
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, ctx.world.device), **_hub(settings)}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if want.training and want.quantization is not None:
        kwargs["quantization_config"] = language_only(want.quantization)
        if ctx.world.device.startswith("cuda"):
            kwargs["device_map"] = {"": ctx.world.device}

    def load_all() -> Any:
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)

    def build_empty() -> Any:
        keys = ("dtype", "trust_remote_code", "attn_implementation")
        return AutoModelForImageTextToText.from_config(
            config, **{k: kwargs[k] for k in keys if k in kwargs}
        )

    strategy = getattr(ctx, "strategy", None) if want.training else None
    if strategy is not None:
        checkpoint = path if Path(path).is_dir() and not settings.revision else None
        model = strategy.load_model(load_all, build_empty, checkpoint, ctx)
    else:
        model = load_all()
    if want.training:
        freeze(model, settings.freeze)
        if ctx.recipe.train.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
            model.config.use_cache = False
    return model, tokenizer


# Top-level modules of the vision towers and projectors (and the output head), which a
# quantization leaves in full precision: only the language model's layers are quantized.
NOT_QUANTIZED = [
    "visual",
    "vision_tower",
    "vision_model",
    "multi_modal_projector",
    "connector",
    "lm_head",
]


def language_only(config: Any) -> Any:
    """A bitsandbytes-style config told to skip the vision parts, unless it names its own."""
    if hasattr(config, "llm_int8_skip_modules") and not config.llm_int8_skip_modules:
        config.llm_int8_skip_modules = list(NOT_QUANTIZED)
    return config


def freeze(model: Any, parts: list[str]) -> None:
    """Parameters of the frozen parts stop training (adapters later freeze the rest anyway)."""
    for name, param in model.named_parameters():
        if part_of(name) in parts:
            param.requires_grad_(False)
