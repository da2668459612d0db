"""Checkpoints: written to a temp dir, then renamed, so a kill at any moment leaves the last whole.

Layout of `checkpoints/step-N/`: the strategy's own files (trainable weights + optimizer, or
its shards), `scheduler.pt`, `rng-rank{R}.pt`, `state.json` (step, data position, early
stopping) and the resolved `recipe.toml`.
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

STEP_DIR = re.compile(r"^step-(\d+)$")


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
) -> Path:
    """Write checkpoint step-N atomically on every rank's behalf; prune to `keep_last`."""
    import torch

    root = checkpoints_dir(ctx.output_dir)
    final = root / f"step-{state['step']}"
    tmp = root / f".tmp-step-{state['step']}"
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ctx.output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return final


def load(
    path: Path, *, strategy: Any, model: Any, optimizer: Any, scheduler: Any, ctx: Any
) -> dict[str, Any]:
    """Restore everything `save` wrote; returns the saved loop state."""
    import torch

    state_file = path / "state.json"
    if not state_file.exists():
        raise TuneError(
            "not a complete tune checkpoint (no state.json).",
            where=str(path),
            fix="point --resume-from at a checkpoints/step-N directory, or use --resume.",
        )
    strategy.load_checkpoint(model, optimizer, path, ctx)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{ctx.world.rank}.pt"
    if rng_file.exists():
        restore_rng(torch.load(rng_file, weights_only=True))
    state = json.loads(state_file.read_text(encoding="utf-8"))
    rank_file = path / f"state-rank{ctx.world.rank}.json"
    state["rank_state"] = (
        json.loads(rank_file.read_text(encoding="utf-8")) if rank_file.exists() else {}
    )
    return state
