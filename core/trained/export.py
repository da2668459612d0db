"""`tune export`: a trained run written in another format by an exporter plugin.

The core prepares what every format starts from, a plain transformers model folder (adapters
merged in 16 bits, the trained tokenizer and chat template beside), and has the exporter the
format names (an `Exporter`, declared with `build=`) write it. The exporter writes into
temporary files; the core moves them into place only when all are written, and never over a
file tune did not write (`.tune-export.json` beside them lists what tune wrote there). The core
names no format: GGUF, Ollama and whatever else come from plugins. Imports no torch until an
export runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tune.errors import TuneError

WHERE = "tune export --format"
EXPORTED = ".tune-export.json"  # the files tune exported into a folder


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
    trust_remote_code: bool = False,
) -> list[Path]:
    """Write `source` (a run, its final/, an adapter or a model folder) as `fmt` to `out`."""
    from tune.contract.context import RunContext
    from tune.trained.merge import locate, plain_model

    selected = select_exporter(pm, fmt, quant, options or [])  # before anything loads
    out = out.absolute()
    _, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    exporter = pm.build(selected, RunContext(recipe=recipe, output_dir=out.parent))
    targets = [Path(t).absolute() for t in exporter.targets(out)]
    check_targets(targets)
    for folder in {t.parent for t in targets}:
        folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tune-export-", dir=targets[0].parent))
    try:
        model_dir, recipe = plain_model(source, pm, precision, work, trust_remote_code)
        exporter.ctx = RunContext(recipe=recipe, output_dir=out.parent)
        staged = work / "staged"
        staged.mkdir()
        if len({t.name for t in targets}) != len(targets):
            raise RuntimeError(f"exporter '{fmt}' names two targets alike: {targets}")
        files = [staged / t.name for t in targets]
        exporter.write(model_dir, files)
        for file, target in zip(files, targets, strict=True):
            if not file.is_file():
                raise RuntimeError(f"exporter '{fmt}' did not write {target.name}")
        for file, target in zip(files, targets, strict=True):
            os.replace(file, target)
            _record(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return targets


def verify_export(
    source: Path,
    fmt: str,
    targets: list[Path],
    pm,
    *,
    quant: str | None = None,
    options: list[str] | None = None,
    trust_remote_code: bool = False,
) -> tuple[list[Any], Any]:
    """`tune export --verify`: the written `targets` checked by their exporter against the
    run's trained model (see tune.trained.verify). Returns (checks, reference)."""
    from tune.contract.context import RunContext
    from tune.trained.merge import locate
    from tune.trained.verify import build_reference, run_checks

    selected = select_exporter(pm, fmt, quant, options or [])
    _, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    exporter = pm.build(selected, RunContext(recipe=recipe, output_dir=targets[0].parent))
    reference = build_reference(source, pm, trust_remote_code)
    return run_checks(exporter, targets, reference), reference


def check_targets(targets: list[Path]) -> None:
    """Every path the exporter will write is new, or a file an earlier export wrote there."""
    for target in targets:
        if target.is_symlink() or target.is_dir():
            raise TuneError(
                f"'{target}' is {'a link' if target.is_symlink() else 'a folder'}, where the "
                "export would write a file.",
                where="tune export --out",
                fix="choose another --out, or move it away.",
            )
        if target.exists() and target.name not in _written(target.parent):
            raise TuneError(
                f"'{target}' exists and tune did not write it; an export never replaces a file "
                "it did not write.",
                where="tune export --out",
                fix="choose another --out, or move the file away first.",
            )


def _written(folder: Path) -> set[str]:
    try:
        body = json.loads((folder / EXPORTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    names = body.get("files", []) if isinstance(body, dict) else []
    return {n for n in names if isinstance(n, str) and "/" not in n}


def _record(target: Path) -> None:
    from tune.train.checkpoints.atomic import write_text

    names = sorted(_written(target.parent) | {target.name})
    write_text(target.parent / EXPORTED, json.dumps({"files": names}, indent=1))
