"""`tune export`: a trained run written in another format by an exporter plugin.

The core prepares what every format starts from, a plain transformers model folder (adapters
merged in 16 bits, the trained tokenizer and chat template beside), and calls the one plugin
that declared the requested exporter (`tune_export`). The core names no format: GGUF, Ollama
and whatever else come from plugins. Imports no torch until an export runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from tune.errors import TuneError

WHERE = "tune export --format"


def select_exporter(pm, fmt: str, quant: str | None, options: list[str]) -> Any:
    """The exporter backend with its settings validated from `--quant` and `-x key=value`."""
    from pydantic import ValidationError
    from tune.recipe import Selected
    from tune.recipe.messages import as_tune_error
    from tune.recipe.overrides import parse_override

    backend = pm.backend("exporter", fmt, where=WHERE)
    module = backend.missing()
    if module:
        dist = pm.infos[backend.plugin].distribution
        raise TuneError(
            f"--format {fmt} needs the module '{module}', which is not installed here.",
            where=WHERE,
            fix=f"pip install {dist} (it brings {module}).",
        )
    values: dict[str, Any] = {}
    for option in options:
        keys, value = parse_override(option)
        values[".".join(keys)] = value
    if quant is not None:
        if "quant" not in backend.settings.model_fields:
            raise TuneError(
                f"--format {fmt} takes no --quant.",
                where=WHERE,
                fix=f"leave --quant out; its options are {', '.join(backend.settings.model_fields)}.",
            )
        values["quant"] = quant
    try:
        settings = backend.settings.model_validate(values)
    except ValidationError as exc:
        raise as_tune_error(
            exc, Path(f"--format {fmt}"), backend.settings, table_label="-x", backend=backend
        ) from None
    return Selected(backend, settings)


def export(
    source: Path,
    fmt: str,
    out: Path,
    pm,
    *,
    quant: str | None = None,
    options: list[str] | None = None,
    precision: str = "bf16",
) -> list[Path]:
    """Write `source` (a run, its final/, an adapter or a model folder) as `fmt` to `out`."""
    from tune.contract.context import RunContext
    from tune.trained.merge import plain_model

    selected = select_exporter(pm, fmt, quant, options or [])  # before anything loads
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tune-export-", dir=out.parent))
    try:
        model_dir, recipe = plain_model(source, pm, precision, work)
        ctx = RunContext(recipe=recipe, output_dir=out.parent)
        written = pm.call("tune_export", selected, model_dir=model_dir, out=out, ctx=ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [Path(p) for p in written]
