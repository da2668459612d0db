"""Greedy generations of the recipe's [generate] prompts during and after training."""

from __future__ import annotations

from typing import Any


def sample(trainer: Any, step: int, final: bool = True) -> list[dict[str, str]]:
    """Greedy generations for [generate] prompts, so the user sees what training did.

    At the end (`final`) the loader may switch the model to a fast inference mode first;
    during training the model is used as it is, and goes back to training mode after.
    """
    from tune.model.generation import greedy_generate

    prompts = trainer.recipe.generate.prompts
    lockstep = trainer.strategy.sharded_params
    if not prompts or not (trainer.ctx.world.is_main or lockstep):
        return []
    model = trainer.strategy.unwrap(trainer.model)
    was_training = model.training
    model.eval()
    if final:
        loader = trainer.recipe.selected("loader")
        model = trainer.pm.call_optional(
            "tune_prepare_generation", loader, lambda: model, model=model, ctx=trainer.ctx
        )
    render = trainer.examples.render_prompt or (lambda p: p)
    samples = [
        {
            "prompt": prompt,
            "reply": greedy_generate(
                model,
                trainer.tokenizer,
                render(prompt),
                trainer.recipe.generate.max_new_tokens,
                device=trainer.ctx.world.device,
                autocast=trainer.strategy.autocast(trainer.ctx),
                **({"synced_gpus": True} if lockstep else {}),
            ),
        }
        for prompt in prompts
    ]
    model.train(was_training and not final)
    if not final:
        trainer.ctx.print(f"samples @ step {step}:")
    for s in samples:
        trainer.ctx.print(
            f"[bold]>>>[/bold] {s['prompt']}\n[green]{s['reply']}[/green]", markup=True
        )
    trainer.ctx.metrics.samples(step, samples)
    return samples
