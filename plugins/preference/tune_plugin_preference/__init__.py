"""tune plugin `preference`: preference training on tune's objective extension point.

Data formats `preference` (prompt + chosen + rejected) and `kto` (labelled replies), objectives
`dpo` (sigmoid, ipo, hinge, robust), `simpo`, `orpo` and `kto`, and the metric `preference`
(eval loss and rewards). Only `tune.plugin` is imported from
tune; torch is imported inside the hooks.
"""

from __future__ import annotations

from tune.plugin import TuneError, hookimpl

from .formats import KTOSettings as KTODataSettings
from .formats import PreferenceSettings
from .objectives import DPOSettings, KTOSettings, ORPOSettings, SimPOSettings

TUNE_API = ">=1,<2"

PAIRS = "preference"  # the example kind: a chosen and a rejected sequence per example
LABELLED = "kto"  # the example kind: one reply with a desirable / undesirable label


@hookimpl
def tune_provide(provide):
    provide.data_format(
        "preference",
        PreferenceSettings,
        doc="prompt + chosen + rejected (TRL) or conversations + chosen/rejected (ShareGPT)",
        examples=PAIRS,
    )
    provide.data_format(
        "kto",
        KTODataSettings,
        doc="a conversation whose last assistant turn has a boolean label",
        examples=LABELLED,
    )
    provide.objective(
        "kto", KTOSettings, doc="KTO: labelled replies, KL from mismatched pairs", examples=LABELLED
    )
    provide.objective(
        "dpo", DPOSettings, doc="DPO against the base: sigmoid, ipo, hinge, robust", examples=PAIRS
    )
    provide.objective(
        "simpo", SimPOSettings, doc="SimPO: reference-free, length-normalized", examples=PAIRS
    )
    provide.objective(
        "orpo", ORPOSettings, doc="ORPO: SFT loss + odds-ratio term, reference-free", examples=PAIRS
    )
    provide.metric("preference", None, doc="eval loss, rewards and reward accuracy of pairs")


@hookimpl
def tune_format_data(name, settings, tokenizer, ctx):
    from .formats import KTOFormat, PreferenceFormat

    return (KTOFormat if name == "kto" else PreferenceFormat)(
        settings,
        tokenizer,
        max_seq_len=ctx.recipe.model.max_seq_len,
        where=f"{ctx.recipe.path}: [data]",
    )


@hookimpl
def tune_build_objective(name, settings, ctx):
    from .objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective

    cls = {
        "dpo": DPOObjective,
        "simpo": SimPOObjective,
        "orpo": ORPOObjective,
        "kto": KTOObjective,
    }[name]
    return cls(settings, ctx)


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    if "preference" not in names:
        return None
    from .metrics import evaluate_pairs

    return evaluate_pairs(model, data)


@hookimpl
def tune_check_recipe(recipe):
    """Pairs have no next-token loss of their own: the perplexity metric cannot score them."""
    objective = recipe.selected("objective")
    if objective is None or objective.backend.examples not in (PAIRS, LABELLED):
        return
    if objective.backend.examples == LABELLED and recipe.data.pack:
        raise TuneError(
            "objective 'kto' does not pack: its KL estimate pairs each prompt with another "
            "row's reply inside a padded micro-batch.",
            where=f"{recipe.path}: [data] pack",
            fix="set pack = false.",
        )
    name = objective.backend.name
    precompute = bool(getattr(objective.settings, "precompute_ref", False))
    if precompute and recipe.data.streaming:
        raise TuneError(
            "precompute_ref scores every pair once before training, but streamed pairs are "
            "read only as training reaches them.",
            where=f"{recipe.path}: [objective] precompute_ref",
            fix="set precompute_ref = false (the reference then runs alongside each step), or "
            "[data] streaming = false.",
        )
    strategy = recipe.selected("strategy")
    zero3 = getattr(getattr(strategy, "settings", None), "zero_stage", None) == 3
    if name in ("dpo", "kto") and zero3 and not recipe.backends.get("adapt") and not precompute:
        fix = (
            "set [objective] precompute_ref = true (reference log-probs computed once before "
            "training, no copy), "
            if name == "dpo"
            else ""
        )
        raise TuneError(
            f"objective '{name}' keeps a frozen copy of the model as its reference in a full "
            "fine-tune, which ZeRO-3's partitioned parameters do not allow.",
            where=f"{recipe.path}: [strategy] zero_stage",
            fix=fix + 'train an adapter ([[adapt]] method = "lora": the reference is then the '
            "base with the adapter off), or use zero_stage = 2.",
        )
    has_eval = bool(recipe.data.eval or recipe.data.eval_fraction)
    if has_eval and "perplexity" in recipe.backends.get("metrics", {}):
        raise TuneError(
            "metric 'perplexity' scores next-token loss, which preference data does not have.",
            where=f"{recipe.path}: [eval] metrics",
            fix='use metrics = ["preference"] (eval loss, rewards and reward accuracy).',
        )
