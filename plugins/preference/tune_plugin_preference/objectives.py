"""Objective `dpo`: pairs in, the summed per-pair loss out (the core normalizes by pairs).

A micro-batch stacks the chosen rows over the rejected rows and runs one forward of the policy
and one of the reference, as TRL does. Packed micro-batches hold whole pairs end to end in a
row; each token carries the index of its sequence, so log-probs are summed per sequence.
Every objective here needs only the log-probs of the label tokens, which `token_logprobs` gives
chunk by chunk: the [rows, width, vocab] logits are never built where that is exact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from tune.plugin import IGNORE, LossOutput, Objective, Settings, processes, token_logprobs

from .losses import dpo_loss, kto_loss, orpo_odds_term, simpo_loss
from .reference import Reference

METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class DPOSettings(Settings):
    """Keys of [objective] for `dpo`."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid (DPO), ipo, hinge (SLiC) or robust (noisy labels)"
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="assumed share of flipped labels (cDPO, robust)"
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="add this times the chosen reply's per-token NLL (RPO); lets DPO start "
        "from a model that cannot yet write the replies",
    )
    precompute_ref: bool = Field(
        False,
        description="score every pair with the initial model once before training and cache "
        "it in the output dir (reused on --resume): no reference forward per step, no frozen "
        "copy; needed for a full fine-tune under ZeRO-3",
    )

    @model_validator(mode="after")
    def _smoothing_applies(self):
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(
                f"label_smoothing applies to loss_type sigmoid or robust, not {self.loss_type}"
            )
        return self


def sequence_logps(per_token: Any, labels: Any, segments: Any = None, n_segments: int = 0):
    """Sum of log p(label) over each sequence's target tokens, and how many there are.

    `per_token` is [rows, width - 1] as `token_logprobs` gives it (0 where the label is IGNORE).
    Padded: one sequence per row (returns [rows]). Packed: `segments` [rows, width] names each
    token's sequence (-1 for padding), and the sums are per segment (returns [n_segments]).
    Under sequence parallelism each rank holds a slice of every sequence: the sums are taken
    over the group (`processes.sequence_sum`), so every rank has the whole sequence's.
    """
    import torch

    mask = labels[:, 1:] != IGNORE
    per_token = per_token * mask
    if segments is None:
        return processes.sequence_sum(per_token.sum(-1)), processes.sequence_sum(mask.sum(-1))
    seg = segments[:, 1:].clamp(min=0).reshape(-1)
    keep = (segments[:, 1:] >= 0) & mask
    sums = torch.zeros(n_segments, dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, seg, (per_token * keep).reshape(-1))
    counts = torch.zeros(n_segments, dtype=torch.long, device=per_token.device)
    counts = counts.index_add(0, seg, keep.reshape(-1).long())
    return processes.sequence_sum(sums), processes.sequence_sum(counts)


def chunked_loss(ctx: Any) -> bool:
    """`[train] chunked_loss` (on unless the recipe turns it off), as the core objective reads it."""
    train = getattr(getattr(ctx, "recipe", None), "train", None)
    return bool(getattr(train, "chunked_loss", True))


class PairObjective(Objective):
    """What all pair objectives share: batch layout, counting, and log-probs of both replies."""

    unit = "pairs"
    has_reference = False  # DPO: compares the policy with a reference policy

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.reference = Reference() if self.has_reference else None
        self.precomputed = False
        self.chunked = chunked_loss(ctx)

    def prepare(self, model: Any, run: Any) -> None:
        """Before the first step: the reference (the base under the adapter, or a frozen
        copy), or with `precompute_ref` the reference log-probs of every pair now (no copy)."""
        if self.reference is None:
            return
        if getattr(self.settings, "precompute_ref", False):
            from .precompute import precompute

            if run.streaming:  # the core refuses it (streams=False); a direct caller is told too
                raise RuntimeError("precompute_ref needs the pairs in memory, not streamed")
            precompute(self, model, run, self.ctx)
            self.precomputed = True
            return
        self.reference.setup(model)

    def reference_logps(self, model: Any, batch: dict[str, Any]):
        """(chosen, rejected) reference log-probs per pair: precomputed, or one no-grad forward."""
        if "ref_chosen" in batch:
            return batch["ref_chosen"], batch["ref_rejected"]
        if self.precomputed:
            raise RuntimeError("precompute_ref: this batch's pairs were not scored before training")
        per_token = self.reference.logprobs(
            model, batch["labels"], self.chunked, **self._inputs(batch)
        )
        ref_chosen, ref_rejected, _, _ = self._split(per_token, batch)
        return ref_chosen, ref_rejected

    def _with_reference(self, batch: dict[str, Any], examples: list[dict[str, Any]]) -> dict:
        """Carry precomputed reference log-probs (set on the example dicts) into the batch."""
        import torch

        from .precompute import CHOSEN, REJECTED

        if examples and all(CHOSEN in e for e in examples):
            batch["ref_chosen"] = torch.tensor([e[CHOSEN] for e in examples])
            batch["ref_rejected"] = torch.tensor([e[REJECTED] for e in examples])
        return batch

    def length(self, example: dict[str, Any]) -> int:
        return len(example["chosen_ids"]) + len(example["rejected_ids"])

    def empty_like(self, example: dict[str, Any]) -> dict[str, Any]:
        return {**example, "weight": 0.0}

    def collate(self, examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        import torch

        rows = [(e["chosen_ids"], e["chosen_labels"]) for e in examples]
        rows += [(e["rejected_ids"], e["rejected_labels"]) for e in examples]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_ids)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        weight = torch.tensor([float(e.get("weight", 1.0)) for e in examples])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "weight": weight}
        return self._with_reference(batch, examples)

    def collate_packed(self, rows: list[list[dict[str, Any]]], pad_id: int) -> dict[str, Any]:
        """Whole pairs end to end (chosen then rejected), position ids restarting per sequence;
        `segments` gives each token's sequence: 2 k for pair k's chosen, 2 k + 1 its rejected."""
        import torch

        width = max(sum(self.length(e) for e in row) for row in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)
        weights = []
        for r, row in enumerate(rows):
            at = 0
            for example in row:
                k = len(weights)
                weights.append(float(example.get("weight", 1.0)))
                for j, side in enumerate(("chosen", "rejected")):
                    seq, lab = example[f"{side}_ids"], example[f"{side}_labels"]
                    n = len(seq)
                    ids[r, at : at + n] = torch.tensor(seq)
                    labels[r, at + 1 : at + n] = torch.tensor(lab[1:])
                    positions[r, at : at + n] = torch.arange(n)
                    segments[r, at : at + n] = 2 * k + j
                    at += n
            positions[r, at:] = torch.arange(width - at)
        batch = {
            "input_ids": ids,
            "labels": labels,
            "position_ids": positions,
            "segments": segments,
            "weight": torch.tensor(weights),
        }
        return self._with_reference(batch, [e for row in rows for e in row])

    def count(self, batch: dict[str, Any]) -> int:
        return int(round(float(batch["weight"].sum())))

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("input_ids", "attention_mask", "position_ids")
        return {k: batch[k] for k in keys if k in batch}

    def _split(self, per_token: Any, batch: dict[str, Any]):
        """(chosen logps, rejected logps, chosen lengths, rejected lengths), one per pair."""
        if "segments" in batch:
            n = 2 * batch["weight"].numel()
            sums, counts = sequence_logps(per_token, batch["labels"], batch["segments"], n)
            return sums[0::2], sums[1::2], counts[0::2], counts[1::2]
        sums, counts = sequence_logps(per_token, batch["labels"])
        half = sums.shape[0] // 2
        return sums[:half], sums[half:], counts[:half], counts[half:]

    def policy(self, model: Any, batch: dict[str, Any]):
        """The policy's per-token label log-probs, through the strategy's wrapper so its hooks
        fire."""
        return token_logprobs(model, self._inputs(batch), batch["labels"], self.chunked)


class DPOObjective(PairObjective):
    """Direct preference optimization against a reference policy (see `losses.dpo_loss`)."""

    has_reference = True

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        s = self.settings
        chosen, rejected, c_len, r_len = self._split(self.policy(model, batch), batch)
        ref_chosen, ref_rejected = self.reference_logps(model, batch)
        ref_chosen, ref_rejected = ref_chosen.to(chosen.dtype), ref_rejected.to(chosen.dtype)
        per_pair = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=s.beta,
            loss_type=s.loss_type,
            label_smoothing=s.label_smoothing,
            chosen_len=c_len,
            rejected_len=r_len,
        )
        if s.sft_weight:
            per_pair = per_pair - s.sft_weight * chosen / c_len.clamp(min=1)
        weight = batch["weight"].to(per_pair.dtype)
        reward_c = s.beta * (chosen - ref_chosen).detach()
        reward_r = s.beta * (rejected - ref_rejected).detach()
        values = {
            "rewards/chosen": reward_c,
            "rewards/rejected": reward_r,
            "rewards/accuracies": (reward_c > reward_r).float(),
            "rewards/margins": reward_c - reward_r,
            "logps/chosen": chosen.detach(),
            "logps/rejected": rejected.detach(),
        }
        metrics = {k: float((v * weight).sum()) for k, v in values.items()}
        return LossOutput((per_pair * weight).sum(), metrics)


class SimPOSettings(Settings):
    """Keys of [objective] for `simpo`."""

    beta: float = Field(2.0, gt=0, description="scale of the length-normalized reward")
    gamma: float = Field(0.5, ge=0, description="target reward margin (the paper's gamma)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed flip rate")
    sft_weight: float = Field(0.0, ge=0, description="add this times the chosen per-token NLL")


class ORPOSettings(Settings):
    """Keys of [objective] for `orpo`."""

    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term (the paper's lambda)")


def _reward_metrics(reward_c: Any, reward_r: Any, chosen: Any, rejected: Any) -> dict:
    return {
        "rewards/chosen": reward_c,
        "rewards/rejected": reward_r,
        "rewards/accuracies": (reward_c > reward_r).float(),
        "rewards/margins": reward_c - reward_r,
        "logps/chosen": chosen.detach(),
        "logps/rejected": rejected.detach(),
    }


class SimPOObjective(PairObjective):
    """SimPO: no reference model; rewards are beta times the per-token average log-prob."""

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        s = self.settings
        chosen, rejected, c_len, r_len = self._split(self.policy(model, batch), batch)
        chosen_avg, rejected_avg = chosen / c_len.clamp(min=1), rejected / r_len.clamp(min=1)
        per_pair = simpo_loss(
            chosen_avg, rejected_avg, beta=s.beta, gamma=s.gamma, label_smoothing=s.label_smoothing
        )
        if s.sft_weight:
            per_pair = per_pair - s.sft_weight * chosen_avg
        weight = batch["weight"].to(per_pair.dtype)
        values = _reward_metrics(
            s.beta * chosen_avg.detach(), s.beta * rejected_avg.detach(), chosen, rejected
        )
        metrics = {k: float((v * weight).sum()) for k, v in values.items()}
        return LossOutput((per_pair * weight).sum(), metrics)


class ORPOObjective(PairObjective):
    """ORPO: the chosen reply's per-token NLL minus beta times the odds-ratio term; no
    reference model. Rewards are beta times the per-token average log-probs (TRL's)."""

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        s = self.settings
        chosen, rejected, c_len, r_len = self._split(self.policy(model, batch), batch)
        chosen_avg, rejected_avg = chosen / c_len.clamp(min=1), rejected / r_len.clamp(min=1)
        term, log_odds = orpo_odds_term(chosen_avg, rejected_avg)
        per_pair = -chosen_avg - s.beta * term
        weight = batch["weight"].to(per_pair.dtype)
        values = _reward_metrics(
            s.beta * chosen_avg.detach(), s.beta * rejected_avg.detach(), chosen, rejected
        )
        values["nll_loss"] = -chosen_avg.detach()
        values["log_odds_ratio"] = log_odds.detach()
        metrics = {k: float((v * weight).sum()) for k, v in values.items()}
        return LossOutput((per_pair * weight).sum(), metrics)


class KTOSettings(Settings):
    """Keys of [objective] for `kto`."""

    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    desirable_weight: float = Field(1.0, gt=0, description="lambda_D: weight of desirable replies")
    undesirable_weight: float = Field(
        1.0, gt=0, description="lambda_U: weight of undesirable replies"
    )


class KTOObjective(Objective):
    """KTO on single labelled replies. A micro-batch holds each example's sequence and a
    mismatched one (its prompt with the previous example's completion, as TRL cycles them):
    the KL reference point z0 is the mean policy/reference log ratio of the mismatched ones."""

    unit = "examples"

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.reference = Reference()
        self.chunked = chunked_loss(ctx)

    def prepare(self, model: Any, run: Any) -> None:
        """Before the first step: the reference (the base under the adapter, or a frozen copy)."""
        self.reference.setup(model)

    def length(self, example: dict[str, Any]) -> int:
        return len(example["prompt_ids"]) + len(example["completion_ids"])

    def empty_like(self, example: dict[str, Any]) -> dict[str, Any]:
        return {**example, "weight": 0.0}

    def collate(self, examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        import torch

        completions = [e["completion_ids"] for e in examples]
        mismatched = completions[-1:] + completions[:-1]
        rows = [e["prompt_ids"] + e["completion_ids"] for e in examples]
        rows += [e["prompt_ids"] + c for e, c in zip(examples, mismatched, strict=True)]
        prompts = [len(e["prompt_ids"]) for e in examples] * 2
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, n_prompt) in enumerate(zip(rows, prompts, strict=True)):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
            mask[i, : len(row)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "desirable": torch.tensor([bool(e["desirable"]) for e in examples]),
            "weight": torch.tensor([float(e.get("weight", 1.0)) for e in examples]),
        }

    def collate_packed(self, rows, pad_id):
        raise RuntimeError("kto does not pack: it declares packs=False, so [data] pack is refused")

    def count(self, batch: dict[str, Any]) -> int:
        return int(round(float(batch["weight"].sum())))

    def positions(self, batch: dict[str, Any]) -> int:
        return batch["input_ids"].numel()

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        import torch

        s = self.settings
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"]
        logps, _ = sequence_logps(token_logprobs(model, inputs, labels, self.chunked), labels)
        ref_per_token = self.reference.logprobs(model, labels, self.chunked, **inputs)
        ref_logps, _ = sequence_logps(ref_per_token, labels)
        n = batch["weight"].numel()
        weight = batch["weight"].to(logps.dtype)
        ratio, kl_ratio = (logps - ref_logps)[:n], (logps - ref_logps).detach()[n:]
        # z0: the mean log ratio of the mismatched pairs of this micro-batch on every rank (as
        # TRL gathers it), clamped at 0 and detached. Every rank calls loss() equally often.
        kl_sum = self.collectives.all_reduce_sum(float((kl_ratio * weight).sum()))
        kl_n = self.collectives.all_reduce_sum(float(weight.sum()))
        kl = torch.tensor(max(kl_sum / max(kl_n, 1.0), 0.0), dtype=logps.dtype, device=logps.device)
        per_example = kto_loss(
            ratio,
            batch["desirable"],
            kl,
            beta=s.beta,
            desirable_weight=s.desirable_weight,
            undesirable_weight=s.undesirable_weight,
        )
        good = batch["desirable"].to(weight.dtype) * weight
        bad = (1 - batch["desirable"].to(weight.dtype)) * weight
        rewards = s.beta * ratio.detach()
        metrics = {
            "rewards/chosen": (float((rewards * good).sum()), float(good.sum())),
            "rewards/rejected": (float((rewards * bad).sum()), float(bad.sum())),
            "logps/chosen": (float((logps[:n].detach() * good).sum()), float(good.sum())),
            "logps/rejected": (float((logps[:n].detach() * bad).sum()), float(bad.sum())),
            "kl": (float(kl), 1.0),
        }
        return LossOutput((per_example * weight).sum(), metrics)
