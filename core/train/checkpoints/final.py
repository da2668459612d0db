"""final/: the artifact users keep, written like a checkpoint (into a temporary folder, renamed
into place), and only over what tune itself wrote there before."""

from __future__ import annotations

from typing import Any

from tune.train.checkpoints.atomic import atomic_dir
from tune.train.checkpoints.save import is_write_failure, write_failed


def save_final(session: Any, run_dir: Any) -> None:
    """The strategy's model or adapter, the tokenizer, what plugins save beside them
    (`tune_save_extras`) and the resolved recipe, in `output_dir/final/`."""
    ctx, strategy = session.ctx, session.strategy
    final = ctx.output_dir / "final"
    main = ctx.world.is_main
    try:
        if main and run_dir is not None:
            run_dir.check_final()
        ctx.collectives.barrier()
        with atomic_dir(final, ctx.output_dir, main=main) as tmp:
            ctx.collectives.barrier()  # the main rank created tmp
            strategy.save_final(session.model, session.tokenizer, tmp, ctx)
            if main:
                session.pm.hook.tune_save_extras(model=session.base_model, path=tmp, ctx=ctx)
                (tmp / "recipe.toml").write_text(session.recipe_text, encoding="utf-8")
            ctx.collectives.barrier()
        if main and run_dir is not None:
            run_dir.record_final()
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        raise write_failed(exc, "final model", final, ctx) from None
    ctx.collectives.barrier()
