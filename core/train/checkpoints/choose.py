"""Which checkpoint `--resume` continues from, and whether the recipe still describes that run.

Chosen before the model loads, so a refusal costs nothing and changes nothing on disk: the
newest checkpoint whose files match its manifest (a damaged one is reported and skipped; one
without a manifest is used only when no verified one exists, with a warning), then the
training-relevant settings compared with the new recipe's, the data's content and the base
weights' fingerprint included. A change is refused with a diff unless `--resume-changed` is
given; then the new values take effect (`tune.train.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.recipe.toml import tomllib
from tune.train.checkpoints import manifest
from tune.train.checkpoints.save import checkpoints_dir, list_checkpoints


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
    settings = manifest.describe_run(resolved, data_fingerprint(pm, ctx), ctx.world.world_size)
    weights = model_fingerprint(ctx.recipe)
    if weights is not None:
        settings["model.weights"] = weights
    return settings


HEAD_BYTES = 1 << 20  # what is hashed of a weights file besides its size: its header region
SAMPLE_BYTES, SAMPLES = 64 << 10, 16  # and 16 blocks of 64 KiB spread over the rest: ~1 MiB


def _samples(start: int, size: int) -> list[int]:
    """Offsets of the sampled blocks between the header and the end of a file."""
    span = size - start
    if span <= 0:
        return []
    if span <= SAMPLE_BYTES * SAMPLES:
        return list(range(start, size, SAMPLE_BYTES))
    step = (span - SAMPLE_BYTES) // (SAMPLES - 1)
    return [start + i * step for i in range(SAMPLES)]


def model_fingerprint(recipe: Any) -> str | None:
    """The base model's identity, cheap: for a local folder or file the size, the header region
    and 16 sampled blocks (~1 MiB) of every weights and config file, hashed; for a hub id the
    cached snapshot's commit.
    None when it cannot be said offline (a hub id not in the cache, the tiny built-ins whose
    content the recipe's own settings decide)."""
    import hashlib

    path_text = recipe.model.path
    if path_text.startswith("tune:"):
        return None
    local = Path(path_text).expanduser()
    if not local.is_absolute() and not local.exists():
        local = recipe.path.parent / local
    if local.exists():
        files = (
            [local]
            if local.is_file()
            else sorted(
                p
                for p in local.iterdir()
                if p.is_file()
                and (
                    p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
                    or p.name == "config.json"
                    or p.name.endswith(".index.json")
                )
            )
        )
        digest = hashlib.sha256()
        for file in files:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}:".encode())
            with file.open("rb") as fh:
                head = _header_length(fh, file, size)
                digest.update(fh.read(head))
                for at in _samples(head, size):  # a few blocks of the weights themselves
                    fh.seek(at)
                    digest.update(fh.read(SAMPLE_BYTES))
        return "sha256:" + digest.hexdigest()[:16]
    return _hub_commit(path_text, recipe)


def _header_length(fh: Any, file: Path, size: int) -> int:
    """Bytes that describe a weights file: a safetensors header whole, else its first MiB."""
    import struct

    if file.suffix == ".safetensors" and size >= 8:
        (length,) = struct.unpack("<Q", fh.read(8))
        fh.seek(0)
        return min(8 + length, size)
    return min(HEAD_BYTES, size)


def _hub_commit(repo: str, recipe: Any) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return None
    revision = getattr(recipe.backends.get("loader") and recipe.selected("loader").settings,
                       "revision", None)  # fmt: skip
    try:
        found = try_to_load_from_cache(repo, "config.json", revision=revision)
    except Exception:  # not a repo id (a typo'd path): nothing to compare
        return None
    if not isinstance(found, str):
        return None
    return "hub:" + Path(found).parent.name


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
        new = dict(settings)
    if "model.weights" not in old:  # written before base weights were fingerprinted
        new.pop("model.weights", None)
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
        if reason == manifest.UNVERIFIED:
            _warn_unverified(ctx, path)
            return path
        if reason:
            intact = [p for p in list_checkpoints(path.parent.parent) if p != path]
            intact = [p for p in intact if manifest.damage(p) is None]
            raise TuneError(
                f"checkpoint {path} cannot be resumed: {reason}.",
                where="--resume-from",
                fix=f"resume from an intact one (--resume-from {intact[-1]})"
                if intact
                else "point --resume-from at a whole checkpoints/step-N directory.",
            )
        return path
    found = list_checkpoints(out)
    damaged, unverified = [], []
    for path in reversed(found):
        reason = manifest.damage(path)
        if reason is None:
            skipped = damaged + [f"{p.name} ({manifest.UNVERIFIED})" for p in unverified]
            if skipped:
                ctx.print(
                    f"[yellow]warning:[/yellow] skipping checkpoint(s) {'; '.join(skipped)}; "
                    f"resuming from {path.name}"
                )
            return path
        if reason == manifest.UNVERIFIED:
            unverified.append(path)
        else:
            damaged.append(f"{path.name} ({reason})")
    if unverified:  # none is verified: the newest unverified one, loudly
        _warn_unverified(ctx, unverified[0])
        return unverified[0]
    if damaged:
        raise TuneError(
            f"no intact checkpoint in {checkpoints_dir(out)}: {'; '.join(damaged)}.",
            where=where,
            fix="resume from a copy with --resume-from PATH, or start a new run in another "
            "output_dir (the damaged checkpoints stay where they are).",
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


def _warn_unverified(ctx: Any, path: Path) -> None:
    ctx.print(
        f"[yellow]warning:[/yellow] checkpoint {path} has {manifest.UNVERIFIED} (written by a "
        "tune from before manifests, or changed by hand); resuming from it anyway, every pickle "
        "in it checked weights-only"
    )


def _saved_settings(path: Path) -> dict[str, Any] | None:
    body = manifest.read(path)
    return None if body is None else body.get("settings")


def _saved_recipe(path: Path) -> dict[str, Any]:
    text = (path / "recipe.toml").read_text(encoding="utf-8")
    resolved = tomllib.loads(text)
    resolved.get("data", {}).pop("train", None)
    return resolved
