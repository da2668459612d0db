"""Checkpoints: written to a temp dir, then renamed, so a kill at any moment leaves the last whole.

Layout of `checkpoints/step-N/`: the strategy's own files (trainable weights + optimizer, or
its shards), `scheduler.pt`, `rng-rank{R}.pt`, `state.json` (step, data position, early
stopping), the resolved `recipe.toml`, and last `manifest.json` (sizes and hashes of all of
them, and the run's training settings: see `manifest`). A failed write (disk full, no
permission) is one paragraph saying what survived.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.train import manifest

STEP_DIR = re.compile(r"^step-(\d+)$")
# How serializers word a failed write when they do not raise OSError.
IO_MARKERS = (
    "PytorchStreamWriter",
    "iostream error",
    "failed writing",
    "IoError",
    "No space left",
    "File too large",
    "[Errno",
)


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temp dir is never listed)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and (p / "state.json").exists()
    ]
    return [p for _, p in sorted(found)]


def capture_rng() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    *,
    strategy: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    recipe_text: str,
    rank_state: dict[str, Any] | None = None,
    ctx: Any,
    keep_last: int,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint step-N atomically on every rank's behalf; prune to `keep_last`."""
    root = checkpoints_dir(ctx.output_dir)
    final = root / f"step-{state['step']}"
    tmp = root / f".tmp-step-{state['step']}"
    try:
        _write(strategy, model, optimizer, scheduler, state, recipe_text, rank_state, ctx, tmp)
        if ctx.world.is_main:
            manifest.write(tmp, state["step"], settings or {})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        if ctx.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(exc, f"checkpoint step-{state['step']}", final, ctx) from None
    if ctx.world.is_main:
        for old in list_checkpoints(ctx.output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return final


def _write(strategy, model, optimizer, scheduler, state, recipe_text, rank_state, ctx, tmp):
    import torch

    if ctx.world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    strategy.barrier()
    strategy.save_checkpoint(model, optimizer, tmp, ctx)
    torch.save(capture_rng(), tmp / f"rng-rank{ctx.world.rank}.pt")
    # What differs per rank besides RNG (e.g. the streaming cursor).
    (tmp / f"state-rank{ctx.world.rank}.json").write_text(
        json.dumps(rank_state or {}), encoding="utf-8"
    )
    strategy.barrier()
    if ctx.world.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "recipe.toml").write_text(recipe_text, encoding="utf-8")
        (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")


def is_write_failure(exc: BaseException) -> bool:
    """A full disk or a refused write, however the serializer reports it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return True
        text = str(seen)
        if any(marker in text for marker in IO_MARKERS):
            return isinstance(seen, RuntimeError) or type(seen).__name__ == "SafetensorError"
        seen = seen.__cause__ or seen.__context__
    return False


def write_failed(exc: BaseException, what: str, path: Path, ctx: Any) -> TuneError:
    intact = list_checkpoints(ctx.output_dir)
    survived = (
        f"The previous checkpoint ({intact[-1]}) is intact and nothing else was changed."
        if intact
        else "No checkpoint of this run was complete yet; nothing saved before was changed."
    )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TuneError(
        f"could not write the {what} to {path}: {reason}. {survived}",
        where=f"{ctx.recipe.path}: [train] output_dir",
        fix="free space on that disk or fix its permissions (or choose another "
        "-o train.output_dir=...), then run again with --resume.",
    )


def load(
    path: Path,
    *,
    strategy: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    ctx: Any,
    load_scheduler: bool = True,
) -> dict[str, Any]:
    """Restore everything `save` wrote; returns the saved loop state.

    `load_scheduler=False` keeps the scheduler as built from the current recipe (resuming with
    changed settings). A file that fails to load is reported as a damaged checkpoint.
    """
    import torch

    state_file = path / "state.json"
    if not state_file.exists():
        raise TuneError(
            "not a complete tune checkpoint (no state.json).",
            where=str(path),
            fix="point --resume-from at a checkpoints/step-N directory, or use --resume.",
        )
    try:
        strategy.load_checkpoint(model, optimizer, path, ctx)
        if load_scheduler:
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        rng_file = path / f"rng-rank{ctx.world.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=True))
        state = json.loads(state_file.read_text(encoding="utf-8"))
        rank_file = path / f"state-rank{ctx.world.rank}.json"
        state["rank_state"] = (
            json.loads(rank_file.read_text(encoding="utf-8")) if rank_file.exists() else {}
        )
    except TuneError:
        raise
    except Exception as exc:  # a truncated or garbled file: name it, never a traceback
        earlier = [p for p in list_checkpoints(path.parent) if p != path]
        raise TuneError(
            f"checkpoint {path} is damaged and cannot be loaded "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).",
            where=str(path),
            fix=f"resume from an earlier checkpoint with --resume-from {earlier[-1]}"
            if earlier
            else "start the run again with --overwrite.",
        ) from None
    return state
