"""The vision loader's part of `tune estimate`: the language model's config, and the vision
tower and projector counted beside it (frozen weights).

The parameter count of the parts beside the language model is exact: the whole model is built
on the meta device (no memory, no weights read) from its config and its language model's
parameters are subtracted. Image tokens are part of each example's length already; the vision
tower's own activations are not counted (small next to the language model's at the image
sizes these recipes use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.plugin import TuneError, memory

from .loader import part_of


def _config(settings: Any, recipe: Any) -> Any:
    from transformers import AutoConfig

    from .loader import model_folder

    path = str(recipe.model.path)
    folder = model_folder(settings, path, Path(recipe.path))  # tiny models: written once
    try:
        return AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=settings.trust_remote_code
        )
    except OSError:
        raise TuneError(
            f"tune estimate reads the model's config only, and '{path}' is neither a local "
            "folder with a config.json nor a hub id in the local Hugging Face cache.",
            where=f"{recipe.path}: [model] path",
            fix=f"download just the config once (`huggingface-cli download {path} config.json`).",
        ) from None


def loader_estimate(settings: Any, recipe: Any) -> memory.ModelConfig:
    import torch
    from transformers import AutoModelForImageTextToText

    config = _config(settings, recipe)
    text = config.get_text_config().to_dict()
    text["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", False))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    beside = sum(p.numel() for n, p in model.named_parameters() if part_of(n) != "language")
    return memory.ModelConfig(text, beside, "vision tower + projector, frozen")
