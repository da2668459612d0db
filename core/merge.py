"""`tune merge`: a trained adapter becomes a plain model that transformers loads on its own.

The base is always reloaded in 16-bit (or the requested dtype), never quantized, so an adapter
trained on a 4-bit base merges instead of failing. Each `[[adapt]]` step's plugin applies its
own weights through `tune_merge_adapter`, in recipe order.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tune.context import RunContext
from tune.errors import TuneError
from tune.recipe import Recipe, load_recipe, recipe_from_dict, select_backends

# Only what merging uses: a run trained with plugins not installed here still merges.
MERGE_ROLES = ("loader", "adapt")

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def find_adapter(source: Path) -> tuple[Path, Path | None]:
    """(adapter dir, recipe file or None) for a run dir, its final/ dir, or a bare adapter dir."""
    if not source.exists():
        raise TuneError(
            "path not found.",
            where=str(source),
            fix="give a run directory or an adapter directory.",
        )
    adapter = source / "final" if (source / "final").is_dir() else source
    for candidate in (adapter / "recipe.toml", source / "recipe.toml"):
        if candidate.is_file():
            return adapter, candidate
    if (adapter / "adapter_config.json").is_file():
        return adapter, None
    raise TuneError(
        "no adapter here: neither a tune run (recipe.toml) nor a PEFT adapter (adapter_config.json).",
        where=str(source),
        fix="point at a run's output_dir, its final/ directory, or a saved PEFT adapter.",
    )


def recipe_for(adapter: Path, recipe_file: Path | None, pm) -> Recipe:
    if recipe_file is not None:
        recipe = load_recipe(recipe_file)
        select_backends(recipe, pm, roles=MERGE_ROLES)
        return recipe
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise TuneError(
            "adapter_config.json has no base_model_name_or_path.",
            where=str(adapter / "adapter_config.json"),
            fix="merge from the tune run directory instead, which records the base.",
        )
    raw = {
        "model": {"path": base},
        "adapt": [{"method": str(config.get("peft_type", "lora")).lower()}],
        "data": {"train": "(unused by merge)"},
    }
    recipe = recipe_from_dict(raw, adapter / "adapter_config.json")
    select_backends(recipe, pm, roles=MERGE_ROLES)
    return recipe


def locate(source: Path, pm) -> tuple[Path, Path | None, Recipe]:
    """(artifact dir, recipe file or None, recipe with loader and adapt chain selected)."""
    adapter, recipe_file = find_adapter(source)
    return adapter, recipe_file, recipe_for(adapter, recipe_file, pm)


def load_trained(adapter: Path, recipe: Recipe, pm, dtype: str) -> tuple[Any, Any]:
    """(model, tokenizer): a run's trained model, adapters merged in (see `locate`).

    The base is reloaded in `dtype` and never quantized. A run that saved a full model (no
    PEFT adapter) is loaded from its final/ directory; every `[[adapt]]` step's plugin then
    applies its own saved weights through `tune_merge_adapter`, in recipe order.
    """
    from tune.train.run import call_backend

    recipe.model.quantize = None
    recipe.train.gradient_checkpointing = False
    if (adapter / "config.json").is_file() and not (adapter / "adapter_config.json").is_file():
        recipe.model.path = str(adapter)  # full fine-tune: the trained weights are the base
    loader = recipe.selected("loader")
    if "dtype" in type(loader.settings).model_fields:
        loader.settings = loader.settings.model_copy(update={"dtype": DTYPES[dtype]})
    ctx = RunContext(recipe=recipe, output_dir=adapter)
    model, tokenizer = call_backend(pm, "tune_load_model", loader, ctx=ctx)
    for selected in recipe.backends["adapt"]:
        model = call_backend(
            pm, "tune_merge_adapter", selected, model=model, adapter_dir=str(adapter), ctx=ctx
        )
    if (adapter / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter))  # keeps the trained chat template
    model.eval()
    return model, tokenizer


def merge(source: Path, out: Path, dtype: str, pm) -> Path:
    if out.exists() and any(out.iterdir()):
        raise TuneError(
            "the output directory already exists and is not empty.",
            where=str(out),
            fix="choose a new --out directory, or remove this one first.",
        )
    adapter, recipe_file, recipe = locate(source, pm)
    if not recipe.adapt:
        raise TuneError(
            "this run has no [[adapt]] steps: final/ already is a full model.",
            where=str(recipe_file or adapter),
            fix="load final/ directly with transformers; there is nothing to merge.",
        )
    model, tokenizer = load_trained(adapter, recipe, pm, dtype)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    # what plugins add beside the weights (e.g. the beacon's own files) goes along
    pm.hook.tune_save_extras(model=model, path=tmp, ctx=RunContext(recipe=recipe, output_dir=out))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
