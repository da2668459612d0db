"""The README.md model card `tune push` uploads: what the Hub reads, and what a reader needs.

YAML metadata (base_model, library_name, tags, datasets, licence inherited from the base,
model-index with the final eval metrics) built with huggingface_hub's own `ModelCardData`, so
the Hub's parser accepts it; the body gives the base, data, adapt chain, final metrics, the
loss plot and the whole recipe. Nothing here reaches the network except the licence lookup of
a hub base model that is not in the local cache (and never in a dry run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tune.recipe import Recipe

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def hub_id(text: str) -> str | None:
    """`text` when it names a Hub repository (owner/name, not a local path), else None."""
    return text if HUB_ID.match(text) and not Path(text).exists() else None


def base_license(base: str, online: bool) -> str | None:
    """The base model's licence: its local README, the hub cache, then (online) the Hub."""
    from huggingface_hub import ModelCard

    readme: Path | None = Path(base) / "README.md" if Path(base).is_dir() else None
    if readme is None and hub_id(base):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "README.md")
        readme = Path(cached) if isinstance(cached, str) else None
    if readme is not None and readme.is_file():
        return ModelCard.load(readme).data.license
    if online and hub_id(base):
        try:
            from huggingface_hub import model_info

            data = model_info(base).card_data
            return data.license if data else None
        except Exception:  # a licence we cannot read is left out, never a failed push
            return None
    return None


def _datasets(recipe: Recipe) -> list[str]:
    specs: list[str] = []
    for entry in [recipe.raw.get("data", {}), *recipe.raw.get("data", {}).get("mix", [])]:
        for key in ("train", "eval"):
            value = entry.get(key)
            specs += value if isinstance(value, list) else [value] if value else []
    # `hf://org/name` (a Hub dataset, as the data source spells it) is the dataset `org/name`
    return list(
        dict.fromkeys(str(s).removeprefix("hf://").removeprefix("datasets/") for s in specs)
    )


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last train loss and the final eval metrics of a run (summary.json)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text(encoding="utf-8"))
    out = {"train_loss": summary["last_loss"]} if summary.get("last_loss") is not None else {}
    for key, value in (summary.get("eval") or {}).items():
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


def model_card(
    recipe: Recipe,
    run_dir: Path,
    *,
    repo_id: str,
    adapter: bool,
    files: list[str],
    licence: str | None,
    exports: list[tuple[str, str | None, list[str]]] = (),
) -> str:
    """The README.md text."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from tune.recipe import dump_toml

    base = str(recipe.model.path)
    datasets = _datasets(recipe)
    metrics = final_metrics(run_dir)
    methods = [str(step.get("method")) for step in recipe.raw.get("adapt", [])]
    name = repo_id.split("/")[-1]
    evals = [
        EvalResult(
            task_type="text-generation",
            dataset_type=hub_id(datasets[-1]) or "custom",
            dataset_name=datasets[-1] if datasets else "training data",
            metric_type=key,
            metric_value=round(value, 6),
        )
        for key, value in metrics.items()
        if key != "train_loss"
    ]
    data = ModelCardData(
        base_model=hub_id(base),
        library_name="peft" if adapter else "transformers",
        license=licence,
        tags=list(
            dict.fromkeys(["tune", *methods, *(fmt for fmt, _, _ in exports), "text-generation"])
        ),
        datasets=[d for d in datasets if hub_id(d)] or None,
        pipeline_tag="text-generation",
        model_name=name if evals else None,
        eval_results=evals or None,
    )
    lines = [
        f"# {name}",
        "",
        f"Fine-tuned from `{base}` with [tune](https://pypi.org/project/tune/)"
        + (f" ({' then '.join(methods)})" if methods else " (full fine-tune)")
        + (", uploaded as a PEFT adapter." if adapter else ", uploaded as a full model."),
        "",
        "## Data",
        "",
        *[f"- `{d}`" if hub_id(d) else f"- `{Path(d).name}` (local file)" for d in datasets],
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in metrics.items()],
    ]
    if "loss.png" in files:
        lines += ["", "![training loss](loss.png)"]
    for fmt, quant, names in exports:
        shown = ", ".join(f"`{n}`" for n in names)
        lines += ["", f"Also in the `{fmt}` format{f' ({quant})' if quant else ''}: {shown}."]
    lines += [
        "",
        "## Recipe",
        "",
        "```toml",
        dump_toml(recipe.raw).strip(),
        "```",
        "",
        "## Files",
        "",
        *[f"- `{f}`" for f in files],
    ]
    return str(
        ModelCard.from_template(
            data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n".join(lines)
        )
    )
