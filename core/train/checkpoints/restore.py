"""Restoring a checkpoint: everything `save` wrote, into a freshly built session.

A file that fails to load makes the checkpoint damaged: the next older intact checkpoint is
tried (with a warning), and the advice never suggests deleting an intact one. Every pickle a
checkpoint holds is read weights-only or checked by `pickles` before a library reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.train.checkpoints import manifest, pickles
from tune.train.checkpoints.save import list_checkpoints
from tune.train.state import LoopState


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path, session: Any, *, load_scheduler: bool = True) -> LoopState:
    """Restore one checkpoint; returns the saved loop state. A file that fails to load is a
    `Damaged` error naming it (the caller falls back to an older checkpoint)."""
    import torch

    ctx = session.ctx
    state_file = path / "state.json"
    if not state_file.is_file():
        raise TuneError(
            "not a complete tune checkpoint (no state.json).",
            where=str(path),
            fix="point --resume-from at a checkpoints/step-N directory, or use --resume.",
        )
    try:
        pickles.check_checkpoint(path, session.strategy.checkpoint_globals())
        session.strategy.load_checkpoint(session.model, session.optimizer, path, ctx)
        if load_scheduler:
            session.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{ctx.world.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=True))
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        rank_file = path / f"state-rank{ctx.world.rank}.json"
        rank_state = json.loads(rank_file.read_text(encoding="utf-8")) if rank_file.exists() else {}
        if not isinstance(saved, dict) or not isinstance(rank_state, dict):
            raise ValueError("state.json is not a JSON object")
        state = LoopState.from_json(saved)
        session.batches.load_state_dict(rank_state)
    except (TuneError, pickles.UnsafePickle):
        raise
    except Exception as exc:  # a truncated or garbled file: name it, never a traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise Damaged(path, f"{type(exc).__name__}: {text}") from None
    return state


class Damaged(Exception):
    """A checkpoint whose files do not load."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"checkpoint {path} is damaged and cannot be loaded ({reason})")


def load_with_fallback(path: Path, session: Any, *, load_scheduler: bool, explicit: bool):
    """(checkpoint used, its loop state): `path`, or when it fails to load the next older
    intact checkpoint of the same run (not when the user named `path` with --resume-from)."""
    ctx = session.ctx
    tried: list[str] = []
    candidates = [path]
    if not explicit:
        older = [p for p in list_checkpoints(path.parent.parent) if p != path]
        candidates += [p for p in reversed(older) if _step(p) < _step(path)]
    for candidate in candidates:
        if candidate != path and manifest.damage(candidate) is not None:
            continue
        try:
            state = load(candidate, session, load_scheduler=load_scheduler)
        except Damaged as exc:
            tried.append(f"{exc.path.name} ({exc.reason})")
            if explicit:
                break
            continue
        if tried:
            ctx.print(
                f"[yellow]warning:[/yellow] checkpoint(s) {'; '.join(tried)} could not be "
                f"loaded; resumed from {candidate.name} instead"
            )
        return candidate, state
    intact = [p for p in list_checkpoints(path.parent.parent) if manifest.damage(p) is None]
    intact = [p for p in intact if p.name not in {t.split(" ", 1)[0] for t in tried}]
    raise TuneError(
        f"no checkpoint could be loaded: {'; '.join(tried)}.",
        where=str(path),
        fix=f"resume from an intact checkpoint with --resume-from {intact[-1]}"
        if intact
        else "resume from a copy of the run with --resume-from PATH, or start a new run in "
        "another output_dir (tune deletes nothing here unless you pass --overwrite).",
    )


def _step(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1
