"""Metric `lm_eval`: lm-evaluation-harness tasks on the model being trained (or a trained run).

The harness gets the in-memory model (adapters applied, a beacon attached: whatever the run
built) through its `HFLM` wrapper, so there is no second load and no export first. At eval
points of a run (`[eval] metrics = ["lm_eval"]`) or afterwards with
`tune eval RUN --metric lm_eval -o eval.lm_eval.tasks='["hellaswag"]'`. Task data comes from
the hub as lm-eval fetches it, or from local task YAMLs (`include_path`) over local files.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from tune.plugin import Settings, files, hookimpl

TUNE_API = ">=2,<3"


class LmEvalSettings(Settings):
    """Keys of `[eval.lm_eval]`."""

    tasks: list[str] = Field(description="lm-eval task (or group) names")
    include_path: str | None = Field(
        None, description="a folder of your own task YAMLs (relative to the recipe)"
    )
    builtin_tasks: bool = Field(
        True, description="also index lm-eval's own tasks (false: only include_path, faster)"
    )
    num_fewshot: int | None = None
    limit: float | None = Field(None, gt=0, description="examples per task (or a fraction < 1)")
    batch_size: int = Field(8, ge=1)
    apply_chat_template: bool = Field(False, description="render prompts with the chat template")
    seed: int = 1234


@hookimpl
def tune_provide(provide):
    provide.metric(
        "lm_eval",
        LmEvalSettings,
        requires=("lm_eval",),
        doc="lm-evaluation-harness tasks on the model",
    )


def flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's {"task": {"acc,none": 0.5, "acc_stderr,none": ...}} -> {"task/acc": 0.5}."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            suffix = "" if filter_name in ("", "none") else f"[{filter_name}]"
            flat[f"lm_eval/{task}/{name}{suffix}"] = float(value)
    return flat


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    """Every rank evaluates every task (the harness does not shard): results are identical on
    all ranks, and a model sharded across ranks (ZeRO-3) still has every rank in each forward."""
    if "lm_eval" not in names:
        return None
    options = settings["lm_eval"]
    include = None
    if options.include_path:
        where = "[eval.lm_eval] include_path"
        include = str(files.resolve_input(options.include_path, ctx.recipe.path, where))
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    harness_model = HFLM(
        pretrained=model,
        tokenizer=data.tokenizer,
        batch_size=options.batch_size,
        device=str(data.device),
    )
    with data.autocast():
        output = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=list(options.tasks),
            num_fewshot=options.num_fewshot,
            limit=options.limit,
            task_manager=TaskManager(
                include_path=include, include_defaults=options.builtin_tasks or not include
            ),
            apply_chat_template=options.apply_chat_template,
            log_samples=False,
            random_seed=options.seed,
            numpy_random_seed=options.seed,
            torch_random_seed=options.seed,
            fewshot_random_seed=options.seed,
        )
    if output is None:  # lm-eval returns None on ranks other than its own rank 0
        return {}
    return flatten(output["results"])
