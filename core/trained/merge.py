"""`tune merge`: a trained run becomes a plain model that transformers loads on its own.

The base is always reloaded unquantized in the requested dtype (`tune_load_model` asked with
`Load(training=False)`), so an adapter trained on a 4-bit base merges instead of failing.
Each `[[adapt]]` step's plugin applies its own weights through `tune_merge_adapter`, in recipe
order. A directory tune did not write (a PEFT adapter) is described by the adapter that knows
it (its declared `recognizes`). Trust is never read from a run: a saved recipe's
`trust_remote_code` is off unless the user passes `--trust-remote-code`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.contract.context import RunContext
from tune.errors import TuneError
from tune.machine.devices import PRECISION_DTYPES
from tune.recipe import Recipe, load_recipe, recipe_from_dict, select_backends
from tune.train.checkpoints.atomic import atomic_dir

# Only what merging uses: a run trained with plugins not installed here still merges.
MERGE_ROLES = ("loader", "adapt")


def locate(
    source: Path, pm, overrides: list[str] | None = None, trust_remote_code: bool = False
) -> tuple[Path, Path | None, Recipe]:
    """(artifact dir, recipe file or None, recipe with loader and adapt chain selected).

    `source` is a run's output_dir, its final/ directory, a directory another tool wrote that
    an installed adapter recognizes (a PEFT adapter), or a plain transformers model directory.
    `overrides` (`-o key=value`) apply to the run's recipe. What the run's files say about trust
    is ignored: `trust_remote_code` is the caller's (the user's flag).
    """
    if not source.exists():
        raise TuneError(
            "path not found.",
            where=str(source),
            fix="give a run directory or an adapter directory.",
        )
    artifact = source / "final" if (source / "final").is_dir() else source
    for candidate in (artifact / "recipe.toml", source / "recipe.toml"):
        if candidate.is_file():
            recipe = load_recipe(candidate, overrides)
            select_backends(recipe, pm, roles=MERGE_ROLES)
            distrust(recipe, trust_remote_code)
            return artifact, candidate, recipe
    table = recognized(pm, artifact)
    if table is None and (artifact / "config.json").is_file():
        table = {"model": {"path": str(artifact)}}  # a model transformers saved: the base
    if table is None:
        raise TuneError(
            "neither a tune run (no recipe.toml) nor an artifact an installed plugin recognizes.",
            where=str(source),
            fix="point at a run's output_dir or its final/ directory, or install the plugin "
            "that reads what wrote this directory (`tune plugins list` shows what is installed).",
        )
    table.setdefault("data", {"train": "(unused by merge)"})
    from tune.recipe.overrides import apply_overrides

    recipe = recipe_from_dict(apply_overrides(table, overrides or []), artifact, overrides)
    select_backends(recipe, pm, roles=MERGE_ROLES)
    distrust(recipe, trust_remote_code)
    return artifact, None, recipe


def recognized(pm, artifact: Path) -> dict[str, Any] | None:
    """The recipe table an installed adapter reads from another tool's artifact directory."""
    for backend in pm.declared("adapter"):
        if backend.recognizes is not None:
            table = backend.recognizes(artifact)
            if table:
                return table
    return None


TRUST_KEYS = ("trust_remote_code",)


def distrust(recipe: Recipe, allowed: bool) -> None:
    """Settings that would run code from files (`trust_remote_code`) take the user's word, never
    the saved recipe's: a run folder from elsewhere must not be able to run its own Python."""
    for selected in [recipe.backends.get("loader"), *recipe.backends.get("adapt", [])]:
        if selected is None:
            continue
        fields = type(selected.settings).model_fields
        changes = {k: allowed for k in TRUST_KEYS if k in fields}
        if changes:
            selected.settings = selected.settings.model_copy(update=changes)


def load_trained(
    artifact: Path, recipe: Recipe, pm, precision: str, plain: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer): a run's trained model, adapters applied (see `locate`).

    `precision` is bf16, fp16 or fp32. A run that saved a full model (no adapter) is loaded from
    its final/ directory; every `[[adapt]]` step's plugin then applies its own saved weights.
    `plain` (export): refuse a step that leaves tensors the base architecture does not have.
    """
    from tune.contract.loading import Load, as_loaded
    from tune.model.checks import check_folder

    check_folder(artifact)  # a truncated adapter or model is one paragraph, not a traceback
    dtype = PRECISION_DTYPES[precision]
    recipe.model.quantize = None
    recipe.train.gradient_checkpointing = False
    if (artifact / "config.json").is_file() and not (artifact / "adapter_config.json").is_file():
        recipe.model.path = str(artifact)  # full fine-tune: the trained weights are the base
    loader = recipe.selected("loader")
    ctx = RunContext(recipe=recipe, output_dir=artifact)
    want = Load(training=False, dtype=dtype)
    loaded = as_loaded(pm.call("tune_load_model", loader, ctx=ctx, want=want))
    model, tokenizer = loaded.model, loaded.tokenizer
    base_keys = set(model.state_dict()) if plain else set()
    for selected in recipe.backends["adapt"]:

        def unsupported(selected=selected):
            backend = selected.backend
            raise TuneError(
                f"[[adapt]] method = '{backend.name}' (plugin '{backend.plugin}') cannot be "
                "merged or loaded back: the plugin implements no tune_merge_adapter.",
                where=str(artifact),
                fix="load final/ with the library that trained it, or ask the plugin's authors "
                "for merge support.",
            )

        model = pm.call_optional(
            "tune_merge_adapter",
            selected,
            unsupported,
            model=model,
            adapter_dir=str(artifact),
            ctx=ctx,
        )
        if plain:
            refuse_unmerged(selected, set(model.state_dict()) - base_keys, artifact)
    if (artifact / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(artifact))  # keeps the trained template
    model.eval()
    return model, tokenizer


MERGED = ".tune-merged.json"  # written into a folder `tune merge` made: it may replace it


def merge(
    source: Path,
    out: Path,
    precision: str,
    pm,
    trust_remote_code: bool = False,
    dequantize: bool = False,
    console: Any = None,
) -> Path:
    """Write the merged model of `source` to `out`. A run trained on a quantized base (QLoRA)
    is also compared (see `merge_quality`); `dequantize` writes the adapter folded into the
    dequantized quantized base instead of into the 16-bit base."""
    check_out_dir(out)
    artifact, recipe_file, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    if not recipe.adapt:
        raise TuneError(
            "this run has no [[adapt]] steps: final/ already is a full model.",
            where=str(recipe_file or artifact),
            fix="load final/ directly with transformers; there is nothing to merge.",
        )
    trained = None
    if recipe.model.quantize:
        trained = load_dequantized(artifact, recipe, pm)
    elif dequantize:
        raise TuneError(
            "--dequantize folds the adapter into the quantized base it was trained on, and this "
            "run trained on an unquantized base.",
            where=str(recipe_file or artifact),
            fix="merge without --dequantize.",
        )
    model, tokenizer = load_trained(artifact, recipe, pm, precision)
    if trained is not None:
        report = merge_quality(trained, model, tokenizer, recipe, pm, precision)
        show_quality(report, console, source, dequantize)
        if dequantize:
            model = trained.to(_torch_dtype(precision))
    elif dequantize:
        raise TuneError(
            "the run's quantization cannot give its weights back dequantized here (its plugin "
            "has no `dequantize`, or is not installed).",
            where=str(recipe_file or artifact),
            fix="merge without --dequantize.",
        )
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out, out.parent, unique=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # what plugins add beside the weights (e.g. the beacon's own files) goes along
        pm.hook.tune_save_extras(
            model=model, path=tmp, ctx=RunContext(recipe=recipe, output_dir=out)
        )
        (tmp / MERGED).write_text(json.dumps({"source": str(source)}), encoding="utf-8")
    return out


def load_dequantized(artifact: Path, recipe: Recipe, pm) -> Any:
    """What a QLoRA run trained, as one float32 model: the base loaded quantized as in training,
    dequantized by its quantization backend (`dequantize`), each adapter folded in. None when
    the backend cannot (not installed, or no `dequantize`)."""
    from tune.contract.loading import Load, as_loaded

    try:
        select_backends(recipe, pm, roles=("quantization",))
    except TuneError:
        return None
    ctx = RunContext(recipe=recipe, output_dir=artifact)
    quantization = pm.build(recipe.selected("quantization"), ctx)
    if not callable(getattr(quantization, "dequantize", None)):
        return None
    checkpointing = recipe.train.gradient_checkpointing
    recipe.train.gradient_checkpointing = False
    try:
        want = Load(quantization=quantization.config())
        loaded = as_loaded(
            pm.call("tune_load_model", recipe.selected("loader"), ctx=ctx, want=want)
        )
    finally:
        recipe.train.gradient_checkpointing = checkpointing
    model = quantization.dequantize(loaded.model)
    if model is None:
        return None
    for selected in recipe.backends["adapt"]:
        model = pm.call_optional(
            "tune_merge_adapter",
            selected,
            lambda: None,
            model=model,
            adapter_dir=str(artifact),
            ctx=ctx,
        )
        if model is None:
            return None
    return model.float().eval()


def merge_quality(trained: Any, merged: Any, tokenizer: Any, recipe: Recipe, pm, precision: str):
    """How far each way of merging lands from the model the run trained (quantized base +
    adapter, here `trained`), on a few of the run's own sequences: the usual merge (adapter into
    the 16-bit base, `merged`) and dequantize-then-merge (`trained` in `precision`)."""
    import copy

    import torch

    sequences = _sequences(recipe, pm, tokenizer)
    dtype = _torch_dtype(precision)
    candidates = {
        "16-bit base + adapter": copy.deepcopy(merged).float(),
        "dequantized base + adapter": copy.deepcopy(trained).to(dtype).float(),
    }
    report = {}
    with torch.no_grad():
        want = [trained(input_ids=torch.tensor([s])).logits[0].double() for s in sequences]
        for name, model in candidates.items():
            diffs, kls, agree, total = [], [], 0, 0
            for ids, ref in zip(sequences, want, strict=True):
                got = model(input_ids=torch.tensor([ids])).logits[0].double()
                diffs.append((got - ref).abs())
                p, q = ref.log_softmax(-1), got.log_softmax(-1)
                kls.append((p.exp() * (p - q)).sum(-1))
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += len(ids)
            report[name] = {
                "mean_diff": float(torch.cat([d.flatten() for d in diffs]).mean()),
                "max_diff": float(max(d.max() for d in diffs)),
                "kl": float(torch.cat(kls).mean()),
                "top1": agree / max(total, 1),
            }
    return report


def _torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, PRECISION_DTYPES[precision])


def _sequences(recipe: Recipe, pm, tokenizer: Any) -> list[list[int]]:
    from tune.trained.verify import _run_examples

    examples, _ = _run_examples(pm, recipe, tokenizer)
    found = [list(e["input_ids"])[:128] for e in examples[:4] if len(e["input_ids"]) >= 2]
    return found or [tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]]


def show_quality(report: dict, console: Any, source: Path, dequantize: bool) -> None:
    """The comparison, and the offer of --dequantize when it lands closer."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    table = Table(
        "MERGED AS",
        "MEAN |DIFF|",
        "MAX |DIFF|",
        "KL",
        "TOP-1",
        box=None,
        title="logits against the trained model (quantized base + adapter)",
        title_justify="left",
    )
    for name, r in report.items():
        table.add_row(
            name,
            f"{r['mean_diff']:.4f}",
            f"{r['max_diff']:.4f}",
            f"{r['kl']:.2e}",
            f"{r['top1']:.1%}",
        )
    console.print(table)
    usual, dq = report["16-bit base + adapter"], report["dequantized base + adapter"]
    if dequantize:
        console.print("written: the adapter folded into the dequantized base (--dequantize)")
    elif dq["kl"] < usual["kl"]:
        console.print(
            "[yellow]note:[/yellow] the adapter folded into the dequantized base is closer to "
            f"what was trained (KL {dq['kl']:.2e} vs {usual['kl']:.2e}): "
            f"`tune merge {source} --out DIR --dequantize` writes that one.",
            soft_wrap=True,
        )


def check_out_dir(out: Path) -> None:
    """`--out` must be a new or empty folder, or one an earlier `tune merge` wrote."""
    where = "tune merge --out"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TuneError(
            f"'{out}' is {'a link' if out.is_symlink() else 'a file'}, not a folder.",
            where=where,
            fix="give --out a new folder.",
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MERGED).is_file():
        raise TuneError(
            "the output directory already exists, is not empty and was not written by tune merge.",
            where=str(out),
            fix="choose a new --out directory, or empty this one first.",
        )


def refuse_unmerged(selected, added: set[str], artifact: Path) -> None:
    """An adapt step that left modules of its own (beacon) cannot become a plain model file."""
    if not added:
        return
    backend = selected.backend
    example = ", ".join(sorted(added)[:2])
    what = (
        "modules the base architecture does not have"
        if added == {"(its own modules)"}
        else f"{len(added)} tensors the base architecture does not have (e.g. {example})"
    )
    raise TuneError(
        f"[[adapt]] method = '{backend.name}' (plugin '{backend.plugin}') does not fold into the "
        f"base weights: it adds {what}, so the model cannot be written as a plain model of "
        "that architecture.",
        where=str(artifact),
        fix="export a run trained without this step, or use the run with tune itself "
        "(`tune chat`, or `tune merge`, which keeps the step's files beside the model).",
    )


def plain_model(
    source: Path, pm, precision: str, workdir: Path, trust_remote_code: bool = False
) -> tuple[Path, Recipe]:
    """(a plain transformers model folder, the run's recipe) for exporters and `tune push`.

    A full fine-tune's final/ is returned as it is; adapters are merged (`precision`) into a
    new folder under `workdir`. Refuses a run whose adapters cannot fold into the weights (an
    adapter declared `mergeable=False`) before anything loads.
    """
    artifact, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    for selected in recipe.backends["adapt"]:
        if not selected.capabilities.mergeable:
            refuse_unmerged(selected, {"(its own modules)"}, artifact)
    if not recipe.adapt and (artifact / "config.json").is_file():
        return artifact, recipe
    model, tokenizer = load_trained(artifact, recipe, pm, precision, plain=True)
    out = workdir / "merged"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out, recipe
