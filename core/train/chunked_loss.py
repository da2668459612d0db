"""Chunked linear cross-entropy: the next-token loss without the [batch, seq, vocab] logits.

The plain loss projects every position onto the vocabulary, keeps those logits (and their float32
copy) for backward and builds a gradient of the same size: with a 49k vocabulary that is most of
a small model's training memory. Here the model runs its forward as usual, except that its
output head is swapped, for the duration of the call, for a stand-in that receives the final
hidden states. The stand-in keeps only the positions that have a target (prompt and padding
positions contribute nothing to the loss, so dropping them is exact), and calls the head module
on a few hundred rows at a time, each chunk under non-reentrant activation checkpointing: the
chunk's logits are computed, reduced to its loss, freed, and computed again in backward. Peak
memory is one chunk's logits and gradient.

Calling the head *module* per chunk (not its weight) is what makes this generic: a LoRA-wrapped
or `modules_to_save` head, a head tied to the embeddings, a quantized head all work as they are.
Because the swap happens inside the model's forward (the engine's, DDP's, PEFT's wrappers are all
called as usual), nothing else changes. A head partitioned by DeepSpeed ZeRO-3 gets the plain
loss: its weight is not gathered again when a chunk is recomputed in backward.

It is used only where it is exact: a transformers model of a known architecture whose forward is
transformers' own (not replaced by Unsloth, beacon or another patch) and whose logits go straight
to the loss (no soft-capping or logit scaling). Elsewhere the plain loss runs; `plain_reason`
says why. `token_logprobs` is the public helper for other objectives (DPO, KTO, ORPO need the
log-probabilities of the label tokens, not the logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE = -100

# Architectures whose CausalLM forward is `logits = lm_head(hidden)` followed by the loss.
EXACT_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "olmo",
        "olmo2",
        "smollm3",
        "starcoder2",
        "stablelm",
        # mixture-of-experts: the router's loss comes back as `aux_loss` (tune.train.router)
        "qwen2_moe",
        "qwen3_moe",
        "mixtral",
        "gpt_oss",
    }
)
# Config keys that put something between the head and the loss (soft-capping, logit scaling):
# with any of them set, only the plain loss is exact.
POST_HEAD_KEYS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
)
CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in float32): rows = this // vocab


def unwrap(model: Any) -> Any:
    """The transformers model inside DDP, a DeepSpeed engine, torch.compile and PEFT wrappers."""
    for _ in range(8):
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DeepSpeedEngine"):
            model = model.module
        elif hasattr(model, "get_base_model"):  # PeftModel -> the transformers model
            model = model.get_base_model()
        else:
            break
    return model


def find_head(model: Any) -> tuple[Any, str, Any] | None:
    """(owner, attribute, head module) of the output head, or None when there is none to find."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for module in model.modules():
        for attr, child in module.named_children():
            if child is head:
                return module, attr, head
    return None


def plain_reason(model: Any) -> str | None:
    """Why the chunked loss would not be exact for `model` (None: it is)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in EXACT_TYPES:
        return f"model type {model_type!r} is not one known to feed its logits straight to the loss"
    if "forward" in vars(inner):
        return "the model's forward is replaced on the instance (e.g. beacon)"
    if not type(inner).forward.__module__.startswith("transformers."):
        return f"the model's forward comes from {type(inner).forward.__module__} (e.g. Unsloth)"
    for key in POST_HEAD_KEYS:
        if getattr(config, key, None):
            return f"config.{key} is set: the logits are transformed before the loss"
    if any(type(m).__name__.startswith("FSDP") for m in inner.modules()):
        return "FSDP unshards the head only around the model's own forward and backward"
    head = find_head(inner)
    if head is None:
        return "no output head found (get_output_embeddings)"
    # ZeRO-3: a partitioned parameter has a `ds_tensor`. Small ones may be gathered at this
    # moment (persistence, prefetch), so the size alone does not tell; the decision must not
    # depend on when it is asked.
    if any(p.numel() == 0 or hasattr(p, "ds_tensor") for p in head[2].parameters()):
        return (
            "the head's weights are partitioned (ZeRO-3): the backward recompute would not see them"
        )
    return None


def _chunk_rows(vocab: int, rows: int | None) -> int:
    return rows if rows else max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_nll(head: Any, hidden: Any, targets: Any) -> Any:
    """Per-row negative log-likelihood of `targets` (float32, as transformers' loss upcasts)."""
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _chunk_nll_sum(head: Any, hidden: Any, targets: Any) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def predicting(states: Any, labels: Any, what: str = "hidden states") -> Any:
    """The positions of `states` ([B, T, ...]) that `labels[:, 1:]` are the targets of: all but
    the last when the labels are as wide as the inputs; all of them when the labels carry one
    more column (a sequence-parallel slice, whose last target lives on the next rank)."""
    width = labels.shape[1]
    if states.shape[0] != labels.shape[0] or states.shape[1] not in (width, width - 1):
        raise RuntimeError(
            f"next-token loss: {what} {tuple(states.shape)} do not match labels "
            f"{tuple(labels.shape)} (set [train] chunked_loss = false)"
        )
    return states[:, : width - 1]


def carries_target(batch: dict[str, Any]) -> bool:
    """Whether the labels carry the target of the last position (a sequence-parallel slice,
    `tune.train.sequence_parallel`): the model cannot shift them itself."""
    ids, labels = batch.get("input_ids"), batch.get("labels")
    return ids is not None and labels is not None and labels.shape[1] == ids.shape[1] + 1


def _targets(hidden: Any, labels: Any) -> tuple[Any, Any, Any]:
    """(rows of hidden states that predict a label, their labels, the [B, T-1] mask)."""
    rows = predicting(hidden, labels)
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE
    return rows[mask], targets[mask], mask


def _plain_linear(head: Any) -> bool:
    """A bare nn.Linear head (not LoRA-wrapped, not a modules_to_save copy, not quantized):
    its gradients can be taken in the forward pass (`_FusedHeadNLL`)."""
    import torch

    weight = getattr(head, "weight", None)
    return (
        type(head) is torch.nn.Linear
        and type(weight) in (torch.Tensor, torch.nn.Parameter)
        and weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def _fused_head_nll(head: Any, picked: Any, targets: Any, step: int) -> Any:
    """The summed NLL of a bare linear head, its gradients taken chunk by chunk in forward.

    The checkpointed path computes each chunk's logits twice (forward, then again in backward);
    here each chunk's softmax gradient is turned into the gradients of the hidden rows (and of
    the head's weight and bias when they train) at once, so the logits are computed once and
    backward only scales what was kept. Same memory bound (one chunk's logits), the FLOPs of the
    plain loss, exact (the same float32 log-softmax gradient)."""
    import torch
    import torch.nn.functional as F

    weight, bias = head.weight, head.bias

    class FusedHeadNLL(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, rows: Any, w: Any, b: Any) -> Any:
            total = torch.zeros((), dtype=torch.float32, device=rows.device)
            grad_rows = torch.empty_like(rows) if rows.requires_grad else None
            grad_w = torch.zeros_like(w, dtype=torch.float32) if w.requires_grad else None
            grad_b = (
                torch.zeros_like(b, dtype=torch.float32)
                if b is not None and b.requires_grad
                else None
            )
            for start in range(0, rows.shape[0], step):
                h, t = rows[start : start + step], targets[start : start + step]
                logits = F.linear(h, w, b)
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                total -= logprobs.gather(1, t[:, None]).sum()
                grad = logprobs.exp_()  # d nll / d logits = softmax - one-hot, as autograd has it
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad = grad.to(logits.dtype)  # the logits' dtype (under autocast, 16-bit)
                del logits, logprobs
                if grad_rows is not None:
                    grad_rows[start : start + step] = (grad @ w.to(grad.dtype)).to(rows.dtype)
                if grad_w is not None:
                    grad_w += (grad.t() @ h.to(grad.dtype)).float()
                if grad_b is not None:
                    grad_b += grad.float().sum(0)
            ctx.save_for_backward(
                *(x if x is not None else torch.empty(0) for x in (grad_rows, grad_w, grad_b))
            )
            ctx.has = (grad_rows is not None, grad_w is not None, grad_b is not None)
            ctx.dtypes = (w.dtype, b.dtype if b is not None else None)
            return total

        @staticmethod
        def backward(ctx: Any, upstream: Any) -> Any:
            kept = ctx.saved_tensors
            out = []
            for i, (has, tensor) in enumerate(zip(ctx.has, kept, strict=True)):
                if not has:
                    out.append(None)
                    continue
                scaled = tensor * upstream.to(tensor.dtype)
                out.append(scaled.to(ctx.dtypes[i - 1]) if i else scaled)
            return tuple(out)

    return FusedHeadNLL.apply(picked, weight, bias)


def head_nll(head: Any, hidden: Any, labels: Any, reduce: bool, rows: int | None = None) -> Any:
    """The next-token NLL of `labels` given the final `hidden` states, chunk by chunk.

    `reduce`: the summed NLL (a scalar), else per-token NLL as [B, T-1] with 0 where the label
    is IGNORE. Each chunk runs under non-reentrant checkpointing: its logits live only while
    that chunk is computed, in forward and again in backward.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    picked, targets, mask = _targets(hidden, labels)
    n = picked.shape[0]
    if n == 0:  # no target: a zero that still reaches the head (every weight gets a gradient)
        zero = head(hidden[:, :1]).float().sum() * 0.0
        return zero if reduce else zero + torch.zeros(mask.shape, device=hidden.device)
    step = _chunk_rows(_vocab(head), rows)
    if reduce and torch.is_grad_enabled() and _plain_linear(head):
        return _fused_head_nll(head, picked, targets, step)
    fn = _chunk_nll_sum if reduce else _chunk_nll
    parts = []
    for start in range(0, n, step):
        h, t = picked[start : start + step], targets[start : start + step]
        if torch.is_grad_enabled():
            parts.append(checkpoint(fn, head, h, t, use_reentrant=False))
        else:
            parts.append(fn(head, h, t))
    if reduce:
        return torch.stack(parts).sum()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(mask, torch.cat(parts))


def _vocab(head: Any) -> int:
    for attr in ("out_features", "num_embeddings"):
        if isinstance(getattr(head, attr, None), int):
            return getattr(head, attr)
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 32768


def _stand_in(head: Any, labels: Any, reduce: bool, rows: int | None) -> Any:
    import torch

    class StandIn(torch.nn.Module):
        """Takes the head's place for one forward; keeps the result instead of the logits."""

        def __init__(self) -> None:
            super().__init__()
            self.head = head
            self.result: Any = None

        def forward(self, hidden: Any) -> Any:
            self.result = head_nll(self.head, hidden, labels, reduce, rows)
            return hidden.new_zeros(())  # what the model returns as `logits`: unused

    return StandIn()


def forward_nll(
    model: Any, inputs: dict[str, Any], labels: Any, reduce: bool, rows: int | None = None
) -> tuple[Any, Any]:
    """(NLL as in `head_nll`, the model's output) running `model(**inputs)` with its head
    swapped for the chunked stand-in. The caller checked `plain_reason(model) is None`."""
    inner = unwrap(model)
    owner, attr, head = find_head(inner)
    stand_in = _stand_in(head, labels, reduce, rows)
    setattr(owner, attr, stand_in)
    try:
        out = model(**inputs, use_cache=False)
    finally:
        setattr(owner, attr, head)
    if stand_in.result is None:
        raise RuntimeError("chunked loss: the model never called its output head")
    return stand_in.result, out


def plain_nll(logits: Any, labels: Any, reduce: bool) -> Any:
    """The same quantity from full logits (the fallback, and the reference in tests)."""
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:].to(logits.device)
    flat = predicting(logits, labels, "logits").float().reshape(-1, logits.shape[-1])
    nll = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    nll = nll.view(targets.shape) * (targets != IGNORE)
    return nll.sum() if reduce else nll.to(torch.float32)


def token_logprobs(model: Any, inputs: dict[str, Any], labels: Any, chunked: bool = True) -> Any:
    """Log-probabilities of the label tokens, [B, T-1]: entry t is log p(labels[:, t+1] | the
    tokens up to t), 0 where that label is IGNORE (-100).

    For objectives that need label log-probs rather than logits (DPO, KTO, ORPO, SimPO): the
    full logits are never built where that is exact (`plain_reason`), and built once otherwise.
    `inputs` are the model's inputs without labels; works under `torch.no_grad()` too (a
    reference model).
    """
    if chunked and plain_reason(model) is None:
        nll, _ = forward_nll(model, inputs, labels, reduce=False)
        return -nll
    logits = model(**inputs, use_cache=False).logits
    return -plain_nll(logits, labels, reduce=False)


@dataclass
class NextTokenTerms:
    """One micro-batch's next-token loss, term by term.

    `nll`: the summed token loss; `router`: the router's load-balancing term of a
    mixture-of-experts model, already weighted to be normalized like `nll` (None for a dense
    model); `metrics`: for `LossOutput.metrics`; `plain`: why the loss was not chunked (None:
    it was)."""

    nll: Any
    router: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    plain: str | None = None

    @property
    def total(self) -> Any:
        return self.nll if self.router is None else self.nll + self.router


def next_token_terms(model: Any, batch: dict[str, Any], chunked: bool = True) -> NextTokenTerms:
    """The terms of `next_token_loss`, for an objective that logs them."""
    from tune.train.router import router_terms, routes

    reason = plain_reason(model) if chunked else "[train] chunked_loss = false"
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    config = getattr(unwrap(model), "config", None)
    if reason is None:
        nll, out = forward_nll(model, inputs, labels, reduce=True)
    elif routes(config) or carries_target(batch):
        # The model would add its router term to a *mean* loss: take the logits and the router
        # loss apart instead, and weight the router term like every other (router.py). A
        # sequence-parallel slice's labels carry one more column: the model cannot shift them.
        out = model(**inputs, use_cache=False)
        nll = plain_nll(out.logits, labels, reduce=True)
    else:
        # use_cache=False: no KV cache in training; with a cache transformers would not detect
        # packed rows (position ids restarting) and would let packed examples attend to each
        # other. num_items_in_batch=1: the model returns the summed token loss.
        out = model(**batch, use_cache=False, num_items_in_batch=1)
        return NextTokenTerms(out.loss, plain=reason)
    count = int((labels[:, 1:] != IGNORE).sum())
    router, metrics = router_terms(config, out, count, batch.get("attention_mask"))
    return NextTokenTerms(nll, router, metrics, reason)


def next_token_loss(model: Any, batch: dict[str, Any], chunked: bool = True) -> tuple[Any, Any]:
    """(the summed next-token loss of a micro-batch, why it was not chunked or None).

    Chunk by chunk from the final hidden states where that is exact (`plain_reason`), so the
    [batch, seq, vocab] logits never exist; otherwise the model's own summed loss. A
    mixture-of-experts model's router loss is included, weighted to be normalized like the
    token loss. What the default objective computes: an objective that overrides `loss` keeps
    the chunked loss by calling this (or `token_logprobs`).
    """
    terms = next_token_terms(model, batch, chunked)
    return terms.total, terms.plain
