"""Offline tiny vision-language models, `tune:tiny-qwen2-vl`, `-qwen2.5-vl`, `-llava`: a config
in code, random weights from a seed, tune's byte-level tokenizer with the image tokens added,
and an image processor built in code. Written to tune's cache once, then loaded like any local
checkpoint, so tiny runs take the path real checkpoints take."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TINY_VERSION = 2
PREFIX = "tune:"

# A ChatML-style template that renders content parts: an image part becomes the family's
# placeholder, text parts their text. Written for these tiny models (no system default).
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}"
    "{% if p.type == 'image' or p.type == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")

TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}

TINY = ("tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-llava")
QWEN = ("tiny-qwen2-vl", "tiny-qwen2.5-vl")
PATCH = 14  # pixels per vision patch (side)


def tiny_name(path: str) -> str | None:
    name = path.removeprefix(PREFIX)
    return name if path.startswith(PREFIX) and name in TINY else None


SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def tokenizer(name: str):
    """A byte-level tokenizer built in code (256 byte tokens, no merges: each character is a
    token, which suits toy tasks), the chat specials and the family's image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    image = (
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
        if name in QWEN
        else ["<image>"]
    )
    core.add_special_tokens(SPECIAL + image)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL[0],
        eos_token=SPECIAL[1],
        pad_token=SPECIAL[2],
        additional_special_tokens=SPECIAL[3:] + image,
        model_max_length=TEXT["max_position_embeddings"],
    )
    tok.chat_template = QWEN_TEMPLATE if name in QWEN else LLAVA_TEMPLATE
    return tok


def _config(name: str, tok: Any, overrides: dict[str, Any]) -> Any:
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in SPECIAL
        + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<image>"]
    }
    text = {
        **TEXT,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        **overrides.get("text_config", {}),
    }
    vision_over = overrides.get("vision_config", {})
    if name in QWEN:
        from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

        # mrope sections (temporal, height, width) sum to head_dim / 2 = 8
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        common = {"patch_size": PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2}
        if name == "tiny-qwen2-vl":
            family, vision = (
                Qwen2VLConfig,
                {
                    "depth": 2,
                    "embed_dim": 32,
                    "hidden_size": TEXT["hidden_size"],
                    "num_heads": 2,
                    "mlp_ratio": 2,
                },
            )
        else:  # windowed attention in block 0, full attention in block 1
            family, vision = (
                Qwen2_5_VLConfig,
                {
                    "depth": 2,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_heads": 2,
                    "out_hidden_size": TEXT["hidden_size"],
                    "window_size": 4 * PATCH,
                    "fullatt_block_indexes": [1],
                },
            )
        return family(
            text_config=text,
            vision_config={**vision, **common, **vision_over},
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=PATCH,
        projection_dim=32,
        **vision_over,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**text),
        image_token_id=ids["<image>"],
        image_seq_length=(56 // PATCH) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def image_processor(name: str) -> Any:
    """The family's PIL-backed image processor (torchvision is not needed)."""
    if name in QWEN:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        return Qwen2VLImageProcessorPil(
            min_pixels=(2 * PATCH) ** 2,
            max_pixels=(8 * PATCH) ** 2,
            patch_size=PATCH,
            merge_size=2,
            temporal_patch_size=2,
        )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


def materialize(name: str, overrides: dict[str, Any], seed: int) -> Path:
    """The tiny model's folder in tune's cache (written once per name, overrides and seed)."""
    from tune.plugin import files

    key = json.dumps([TINY_VERSION, name, overrides, seed], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = files.cache_root() / "models" / f"{name}-{digest}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForImageTextToText

    tok = tokenizer(name)
    config = _config(name, tok, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    model.generation_config.pad_token_id = tok.pad_token_id

    def write(folder: Path) -> None:
        from safetensors.torch import save_model

        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(folder)
        if name == "tiny-llava":
            from transformers import LlavaProcessor

            LlavaProcessor(
                image_processor=image_processor(name),
                tokenizer=tok,
                patch_size=PATCH,
                vision_feature_select_strategy="default",
                num_additional_image_tokens=1,
                chat_template=tok.chat_template,
            ).save_pretrained(folder)
        else:
            image_processor(name).save_pretrained(folder)
            (folder / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")

    return files.write_once(target, write)
