"""Which checkpoint `--resume` continues from, and whether the recipe still describes that run.

Chosen before the model loads, so a refusal costs nothing and changes nothing on disk: the
newest checkpoint whose files match its manifest (a damaged one is reported and skipped), then
the training-relevant settings compared with the new recipe's. A change is refused with a diff
unless `--resume-changed` is given; then the new values take effect (see `Trainer._resume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.recipe.toml import tomllib
from tune.train import checkpoint, manifest


@dataclass
class ResumePlan:
    path: Path | None  # None: nothing was saved yet, start again from step 0
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)


def data_fingerprint(pm: Any, ctx: Any) -> str:
    """The content of every training source (what the tokenization cache is keyed by)."""
    from tune.data.pipeline import entries, open_source

    parts = []
    for entry in entries(ctx):
        source = open_source(pm, entry, ctx)
        parts.append(source.fingerprint(entry.train, entry.where(ctx, "train")))
    return "|".join(parts)


def run_settings(pm: Any, ctx: Any) -> dict[str, Any]:
    resolved = ctx.recipe.resolved()
    resolved.get("data", {}).pop("train", None)  # the content below, not the path, matters
    return manifest.describe_run(resolved, data_fingerprint(pm, ctx), ctx.world.world_size)


def plan(
    pm: Any, ctx: Any, resume_from: Path | None, allow_changes: bool, settings: dict[str, Any]
) -> ResumePlan:
    where = f"{ctx.recipe.path}: [train] output_dir"
    path = _choose(ctx, resume_from, where)
    if path is None:
        return ResumePlan(None)
    old = _saved_settings(path)
    if old is None:  # a checkpoint from before manifests: compare what its recipe says
        old = manifest.training_settings(_saved_recipe(path))
        new = {k: v for k, v in settings.items() if k in old}
    else:
        new = settings
    changes = manifest.changed(old, new)
    if changes and not allow_changes:
        raise TuneError(
            f"the recipe changed since checkpoint {path} was written, in settings that change "
            f"what is trained: {manifest.format_changes(changes)}.",
            where=str(ctx.recipe.path),
            fix="resume with the recipe as it was; or add --resume-changed to continue with the "
            "new values (they take effect from the resumed step and the saved recipe records "
            "them); or start a new run in another output_dir.",
        )
    return ResumePlan(path, changes)


def _choose(ctx: Any, resume_from: Path | None, where: str) -> Path | None:
    out = ctx.output_dir
    if resume_from is not None:
        path = Path(resume_from)
        reason = manifest.damage(path) if path.is_dir() else "it is not a directory"
        if reason:
            intact = [p for p in checkpoint.list_checkpoints(path.parent.parent) if p != path]
            intact = [p for p in intact if manifest.damage(p) is None]
            raise TuneError(
                f"checkpoint {path} cannot be resumed: {reason}.",
                where="--resume-from",
                fix=f"resume from an intact one (--resume-from {intact[-1]})"
                if intact
                else "point --resume-from at a whole checkpoints/step-N directory.",
            )
        return path
    found = checkpoint.list_checkpoints(out)
    damaged = []
    for path in reversed(found):
        reason = manifest.damage(path)
        if reason is None:
            if damaged:
                ctx.print(
                    f"[yellow]warning:[/yellow] skipping damaged checkpoint(s) "
                    f"{'; '.join(damaged)}; resuming from {path.name}"
                )
            return path
        damaged.append(f"{path.name} ({reason})")
    if damaged:
        raise TuneError(
            f"no intact checkpoint in {checkpoint.checkpoints_dir(out)}: {'; '.join(damaged)}.",
            where=where,
            fix="resume from a copy with --resume-from PATH, or start again with --overwrite.",
        )
    if (out / "final").exists():
        raise TuneError(
            f"the run in {out} finished and kept no checkpoint, so there is nothing to resume.",
            where=where,
            fix="set [train] save_every to keep checkpoints; start a new run with --overwrite "
            "or another -o train.output_dir=....",
        )
    ctx.print(
        f"[yellow]warning:[/yellow] no checkpoint in {out} was complete: starting from step 0"
    )
    return None


def _saved_settings(path: Path) -> dict[str, Any] | None:
    body = manifest.read(path)
    return None if body is None else body.get("settings")


def _saved_recipe(path: Path) -> dict[str, Any]:
    text = (path / "recipe.toml").read_text(encoding="utf-8")
    resolved = tomllib.loads(text)
    resolved.get("data", {}).pop("train", None)
    return resolved
