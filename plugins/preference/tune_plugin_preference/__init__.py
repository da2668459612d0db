"""tune plugin `preference`: preference training on tune's objective extension point.

Data formats `preference` (prompt + chosen + rejected) and `kto` (labelled replies), objectives
`dpo` (sigmoid, ipo, hinge, robust), `simpo`, `orpo` and `kto`, and the metric `preference`
(eval loss and rewards). Each objective is a class the core builds (`build=`); what it needs
(a reference, whole rows, no packing) is declared as capabilities, which the core checks
against the recipe before anything loads. Only `tune.plugin` is imported from tune; torch is
imported inside the hooks.
"""

from __future__ import annotations

from tune.plugin import Capabilities, hookimpl

from .formats import KTOSettings as KTODataSettings
from .formats import PreferenceSettings
from .objectives import (
    DPOObjective,
    DPOSettings,
    KTOObjective,
    KTOSettings,
    ORPOObjective,
    ORPOSettings,
    SimPOObjective,
    SimPOSettings,
)

TUNE_API = ">=2,<3"

PAIRS = "preference"  # the example kind: a chosen and a rejected sequence per example
LABELLED = "kto"  # the example kind: one reply with a desirable / undesirable label


def dpo_capabilities(settings: DPOSettings) -> Capabilities:
    """DPO keeps a reference (the base under the adapter, or a frozen copy in a full
    fine-tune), unless `precompute_ref` scores every pair with it once before training: then
    no copy is kept, and every pair must be in memory before the first step."""
    precompute = bool(settings.precompute_ref)
    return Capabilities(
        needs_reference=not precompute,
        streams=not precompute,
        sequences_per_example=2,  # chosen and rejected
        full_logits=False,  # label log-probs chunk by chunk (token_logprobs)
        why={
            "needs_reference": "set [objective] precompute_ref = true to score the reference "
            "once before training instead, with no copy kept",
            "streams": "precompute_ref scores every pair once before training, but streamed "
            "pairs are read only as training reaches them; set precompute_ref = false to run "
            "the reference alongside each step",
        },
    )


# SimPO and ORPO are reference-free: no reference forward, no frozen copy.
REFERENCE_FREE = Capabilities(sequences_per_example=2, full_logits=False)

KTO = Capabilities(
    needs_reference=True,
    packs=False,
    sequences_per_example=2,  # each reply, and its prompt with another row's reply (the KL)
    full_logits=False,
    why={
        "packs": "its KL estimate pairs each prompt with another row's reply inside a padded "
        "micro-batch",
        "needs_reference": "kto has no precompute_ref yet",
    },
)


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
        "kto",
        KTOSettings,
        doc="KTO: labelled replies, KL from mismatched pairs",
        examples=LABELLED,
        build=KTOObjective,
        capabilities=KTO,
    )
    provide.objective(
        "dpo",
        DPOSettings,
        doc="DPO against the base: sigmoid, ipo, hinge, robust",
        examples=PAIRS,
        build=DPOObjective,
        capabilities=dpo_capabilities,
    )
    provide.objective(
        "simpo",
        SimPOSettings,
        doc="SimPO: reference-free, length-normalized",
        examples=PAIRS,
        build=SimPOObjective,
        capabilities=REFERENCE_FREE,
    )
    provide.objective(
        "orpo",
        ORPOSettings,
        doc="ORPO: SFT loss + odds-ratio term, reference-free",
        examples=PAIRS,
        build=ORPOObjective,
        capabilities=REFERENCE_FREE,
    )
    provide.metric(
        "preference",
        None,
        doc="eval loss, rewards and reward accuracy of pairs (or KTO replies)",
        capabilities=Capabilities(
            scores=(PAIRS, LABELLED),
            why={"scores": "it reports the loss and rewards of the preference objectives"},
        ),
    )


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
def tune_evaluate(names, settings, model, data, ctx):
    if "preference" not in names:
        return None
    from .metrics import evaluate_pairs

    return evaluate_pairs(model, data)
