"""tune plugin `rl`: online reinforcement learning, the data of a step made by the model.

Objectives `grpo` (loss types grpo, bnpo, dr_grpo, dapo; token or sequence (GSPO) importance
sampling), `rloo` and `gkd` (on-policy distillation); rewards `exact_match`, `regex`, `python`
and `reward_model`; the rollout engine `transformers`; the data format `prompt`. The objectives
generate in `Objective.make_step`, once per optimizer step before the core counts the step's
units, so the core's exact normalization over micro-batches and ranks applies to what was
generated. Only `tune.plugin` is imported from tune; torch inside the methods.
"""

from __future__ import annotations

from tune.plugin import Capabilities, TuneError, hookimpl

from .formats import PROMPTS, PromptFormat, PromptSettings
from .objectives import (
    GKDObjective,
    GKDSettings,
    GRPOObjective,
    GRPOSettings,
    RLOOObjective,
    RLOOSettings,
)
from .rewards import (
    ExactMatch,
    ExactMatchSettings,
    Python,
    PythonSettings,
    Regex,
    RegexSettings,
    RewardModel,
    RewardModelSettings,
)
from .rollout import TransformersRollout, TransformersRolloutSettings

TUNE_API = ">=2,<3"


def policy_capabilities(settings) -> Capabilities:
    """A reference only with beta > 0; label log-probs chunk-wise; G sequences per prompt."""
    beta = getattr(settings, "beta", 0.0)
    return Capabilities(
        needs_reference=beta > 0,
        full_logits=settings.temperature != 1.0,
        sequences_per_example=settings.num_generations,
        packs=False,
        why={
            "needs_reference": "set [objective] beta = 0 to train without a reference",
            "packs": "prompts are sampled, not packed; set [data] pack = false",
        },
    )


def gkd_capabilities(settings) -> Capabilities:
    return Capabilities(
        full_logits=True,
        sequences_per_example=settings.num_generations,
        packs=False,
        why={"packs": "prompts are sampled, not packed; set [data] pack = false"},
    )


@hookimpl
def tune_provide(provide):
    provide.data_format(
        "prompt",
        PromptSettings,
        doc="prompts to sample from (a string or chat messages) + the columns rewards read",
        examples=PROMPTS,
    )
    provide.objective(
        "grpo",
        GRPOSettings,
        doc="GRPO and variants: loss_type grpo/bnpo/dr_grpo/dapo, GSPO (sequence level)",
        build=GRPOObjective,
        examples=PROMPTS,
        capabilities=policy_capabilities,
    )
    provide.objective(
        "rloo",
        RLOOSettings,
        doc="REINFORCE leave-one-out with a clipped sequence ratio",
        build=RLOOObjective,
        examples=PROMPTS,
        capabilities=policy_capabilities,
    )
    provide.objective(
        "gkd",
        GKDSettings,
        doc="on-policy distillation: generalized JSD to a teacher on the student's samples",
        build=GKDObjective,
        examples=PROMPTS,
        capabilities=gkd_capabilities,
    )
    provide.reward(
        "exact_match", ExactMatchSettings, doc="the completion equals a column", build=ExactMatch
    )
    provide.reward("regex", RegexSettings, doc="the completion matches a pattern", build=Regex)
    provide.reward(
        "python", PythonSettings, doc="your function in a file beside the recipe", build=Python
    )
    provide.reward(
        "reward_model",
        RewardModelSettings,
        doc="a sequence-classification model's score, batched, no gradients",
        build=RewardModel,
        requires=("transformers",),
    )
    provide.rollout(
        "transformers",
        TransformersRolloutSettings,
        doc="the policy's own generate: batched sampling, KV cache, adapter active",
        build=TransformersRollout,
    )


@hookimpl
def tune_format_data(name, settings, tokenizer, ctx):
    return PromptFormat(
        settings,
        tokenizer,
        max_seq_len=ctx.recipe.model.max_seq_len,
        where=f"{ctx.recipe.path}: [data]",
    )


@hookimpl
def tune_check_recipe(recipe):
    """At `tune validate`: each python reward's file exists and defines its function (parsed,
    not run), so a typo never waits for the first step."""
    from types import SimpleNamespace

    for selected in recipe.backends.get("reward", []):
        if selected.backend.build is Python:
            Python(selected.settings, SimpleNamespace(recipe=recipe)).check()
    objective = recipe.backends.get("objective")
    build = objective.backend.build if objective is not None else None
    online = build in (GRPOObjective, RLOOObjective, GKDObjective)
    if online and (recipe.data.eval_files or recipe.data.eval_fraction):
        raise TuneError(
            f"objective '{objective.backend.name}' has no eval loss: its data is sampled "
            "during training, and eval prompts would need a generation of their own.",
            where=f"{recipe.path}: [data] eval",
            fix="remove [data] eval / eval_fraction; the train metrics (reward, lengths, KL) "
            "and samples.jsonl show progress.",
        )
    strategy = recipe.backends.get("strategy")
    split = getattr(strategy.settings, "sequence_parallel", 1) if strategy is not None else 1
    if online and split > 1:
        raise TuneError(
            f"objective '{objective.backend.name}' generates its completions on each rank, and "
            "sequence parallelism splits every sequence between ranks: the two do not run "
            "together yet.",
            where=f"{recipe.path}: [strategy] sequence_parallel",
            fix="remove sequence_parallel (the completions of online RL are short: data "
            "parallelism alone serves them).",
        )
    if build in (GRPOObjective, RLOOObjective) and not recipe.reward:
        raise TuneError(
            f"objective '{objective.backend.name}' learns from rewards, but the recipe has no "
            "[[reward]].",
            where=f"{recipe.path}: [[reward]]",
            fix='add at least one, e.g. [[reward]] name = "exact_match" column = "answer".',
        )
