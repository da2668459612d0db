"""Writing a checkpoint: every rank's share into a temporary folder, the manifest last, then
renamed into place, so a kill at any moment leaves the previous checkpoint whole.

Layout of `checkpoints/step-N/`: the strategy's own files (trainable weights + optimizer, or
its shards), `scheduler.pt`, `rng-rank{R}.pt`, `state-rank{R}.json` (the stream cursor),
`state.json` (the loop state), the resolved `recipe.toml`, and last `manifest.json` (sizes and
hashes of all of them, and the run's training settings). A failed write (disk full, no
permission) is one paragraph saying what survived.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.train.checkpoints import manifest
from tune.train.checkpoints.atomic import atomic_dir, remove

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
    """Complete checkpoints, oldest first (a temp dir, a link or a file is never listed)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir() or root.is_symlink():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name))
        and not p.is_symlink()
        and p.is_dir()
        and (p / "state.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def capture_rng() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save(session: Any, state: Any, *, keep_last: int) -> Path:
    """Write checkpoint step-N atomically on every rank's behalf; prune to `keep_last`."""
    ctx = session.ctx
    root = checkpoints_dir(ctx.output_dir)
    final = root / f"step-{state.step}"
    main = ctx.world.is_main
    try:
        if main:
            root.mkdir(parents=True, exist_ok=True)
        ctx.collectives.barrier()
        with atomic_dir(final, ctx.output_dir, main=main) as tmp:
            _write(session, state, tmp)
            if main:
                manifest.write(tmp, state.step, session.run_settings)
        ctx.collectives.barrier()
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        raise write_failed(exc, f"checkpoint step-{state.step}", final, ctx) from None
    if main:
        for old in list_checkpoints(ctx.output_dir)[:-keep_last]:
            remove(old, ctx.output_dir)
    ctx.collectives.barrier()
    return final


def _write(session: Any, state: Any, tmp: Path) -> None:
    import torch

    ctx = session.ctx
    ctx.collectives.barrier()  # the main rank created tmp
    session.strategy.save_checkpoint(session.model, session.optimizer, tmp, ctx)
    rank = ctx.world.rank
    torch.save(capture_rng(), tmp / f"rng-rank{rank}.pt")
    (tmp / f"state-rank{rank}.json").write_text(
        json.dumps(session.batches.state_dict()), encoding="utf-8"
    )
    ctx.collectives.barrier()
    if ctx.world.is_main:
        torch.save(session.scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "recipe.toml").write_text(session.recipe_text, encoding="utf-8")
        saved = {**state.to_json(), "micro_per_epoch": session.batches.plan.micro_per_epoch}
        (tmp / "state.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")


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
