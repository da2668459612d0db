"""Ulysses sequence parallelism: each rank of a group of N holds 1/N of every sequence.

`[strategy] sequence_parallel = N` (ddp, fsdp, deepspeed): the world is split into groups of N
consecutive ranks; the ranks of a group get the same examples (the data-parallel degree is
world / N) and each keeps one contiguous slice of every micro-batch's positions. Everything
outside attention is per position, so it runs on the slice as it is; attention swaps the
split (DeepSpeed-Ulysses): an all-to-all turns [seq / N, all heads] into [whole seq, heads / N]
before attention and back after, so each rank attends over the whole sequence for its heads.
Heads go to ranks by key/value head, with the query heads that read it; where they do not
divide by N the split is uneven (exact; the attention load is uneven), so a model needs only
as many key/value heads as ranks.

The slice of a micro-batch ("carry" layout): model inputs (`input_ids`, `attention_mask`,
`position_ids`) hold the slice's C = L / N positions; every other per-token tensor (`labels`,
a preference batch's `segments`) holds C + 1, the slice's own plus the next rank's first, so
`labels[:, 1:]` are exactly the next-token targets of the slice's C positions (the target of a
slice's last position lives on the next rank: labels are shifted before slicing, not after).
So `Objective.count` counts each target on exactly one rank, the chunked loss sums only the
slice's targets, and the core's division by the global count plus the strategies' gradient
average over all world ranks give the gradient of one process (see `shard`). Position ids are
global: the slice's true positions, restarting where packed examples begin.

Attention runs through transformers' attention interface: the model's implementation is set to
`tune_ulysses`, a wrapper of the implementation it had (sdpa or eager). Outside a sliced
micro-batch (eval, generation, a reference model) the wrapper and its mask function are the
original's. Inside one, the wrapper attends per packed example (block-diagonal causal, no
[L, L] mask; right padding needs no mask under a causal one). gloo and NCCL both have
`all_to_all_single`, so this runs on CPU too.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Any

from tune.errors import TuneError
from tune.train import ulysses as exchange

ATTENTION = "tune_ulysses"
IGNORE = -100
# Model inputs: sliced to the slice's own positions. Other [rows, width] tensors carry one more.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
# Padding to a multiple of N: the value of each kind of per-token tensor in a padded column.
PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}

_ACTIVE: SequenceParallel | None = None  # the run's groups, set by `start`
_ORIGINAL: str | None = None  # the implementation the model had (sdpa, eager, ...)


@dataclass
class Layout:
    """Where attention may look in one micro-batch: per row, its (start, end) segments over the
    padded full width `width` (one per packed example; padded rows are one segment)."""

    width: int
    rows: list[list[tuple[int, int]]]

    @property
    def whole_rows(self) -> bool:
        return all(row == [(0, self.width)] for row in self.rows)


class SequenceParallel:
    """This rank's sequence-parallel group and where it is in it."""

    def __init__(self, size: int, rank: int, world_size: int, group: Any):
        self.size, self.group = size, group
        self.rank = rank % size  # the slice this rank keeps
        self.data_rank, self.data_world = rank // size, world_size // size
        self.layout: Layout | None = None  # set while a sliced micro-batch runs

    # -- slicing ---------------------------------------------------------------------------
    def shard(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Layout]:
        """(this rank's slice of a collated micro-batch, where attention may look).

        The width is padded to a multiple of N (pad tokens, no attention, IGNORE labels, no
        segment). With width L = N C, slice s keeps positions [s C, (s + 1) C) of the model
        inputs and [s C, (s + 1) C + 1) of every other per-token tensor, padded by one
        column: so `labels[:, 1:]` of the slices partition the targets of `labels[:, 1:]` of the
        whole batch, each counted and summed once in the group."""
        import torch

        ids = batch["input_ids"]
        rows, width = ids.shape
        padded = math.ceil(width / self.size) * self.size
        positions = batch.get("position_ids")
        if positions is None:
            positions = torch.arange(width).expand(rows, width)
        positions = positions.expand(rows, width)
        mask = batch.get("attention_mask")
        if mask is not None and not _right_padded(mask):
            raise RuntimeError("sequence parallelism: a micro-batch is not right-padded")
        if padded > width:  # padding continues the last example's positions (causal: harmless)
            extra = positions[:, -1:] + torch.arange(1, padded - width + 1)
            positions = torch.cat([positions, extra], dim=1)
        layout = Layout(padded, [_segments(row) for row in positions.tolist()])
        c = padded // self.size
        start = self.rank * c
        out: dict[str, Any] = {}
        for key, value in batch.items():
            if not (torch.is_tensor(value) and value.dim() == 2 and value.shape == ids.shape):
                out[key] = value  # per-row or per-example values (weights, reference log-probs)
                continue
            if key == "position_ids":
                continue
            inputs = key in MODEL_INPUTS
            fill = PAD_VALUES.get(key, IGNORE if key.endswith("labels") else -1)
            extra = padded - width + (0 if inputs else 1)
            if extra:
                value = torch.cat([value, value.new_full((rows, extra), fill)], dim=1)
            out[key] = value[:, start : start + c + (0 if inputs else 1)].contiguous()
        out["position_ids"] = positions[:, start : start + c].contiguous()
        return out, layout

    @contextlib.contextmanager
    def active(self, layout: Layout):
        """While a sliced micro-batch runs forward and backward (checkpointed layers recompute
        their attention in backward): attention exchanges heads over the group."""
        self.layout = layout
        try:
            yield
        finally:
            self.layout = None


def _right_padded(mask: Any) -> bool:
    """Every row is ones then zeros (what `collate` gives): a causal mask alone hides padding."""
    m = mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


def _segments(positions: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive positions: a packed row's examples."""
    starts = [0] + [t for t in range(1, len(positions)) if positions[t] != positions[t - 1] + 1]
    return list(zip(starts, starts[1:] + [len(positions)], strict=True))


def sequence_sum(x: Any) -> Any:
    """`x` summed over the sequence-parallel group while a sliced micro-batch runs (a
    per-sequence sum of per-token values, each rank holding a slice of the tokens), else `x`.
    Differentiable: what an objective computes from the sum gets the whole sequence's gradient.
    Integer tensors (token counts) are summed without gradient."""
    sp = _ACTIVE
    if sp is None or sp.layout is None:
        return x
    if not x.is_floating_point():
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out, group=sp.group)
        return out
    return exchange.group_sum(x, sp.group)


# -- the attention function -------------------------------------------------------------------
def _original_function(module: Any) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _ORIGINAL in (None, "eager"):
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[_ORIGINAL]


def _causal(module: Any, q: Any, k: Any, v: Any, kwargs: dict[str, Any]) -> Any:
    """Causal attention of one block (no other mask): sdpa's own is_causal, or for eager an
    additive causal mask of the block's size."""
    import torch

    fn = _original_function(module)
    mask = None
    if _ORIGINAL in (None, "eager") and q.shape[2] > 1:
        n = q.shape[2]
        mask = torch.full((n, n), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device)
        mask = mask.triu(1)[None, None]
    out, _ = fn(module, q, k, v, mask, **kwargs)
    return out  # [B, n, H, D]


def ulysses_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw):
    """transformers' attention interface: `query` [B, H, C, D], `key`/`value` [B, KV, C, D]
    of this rank's slice; returns ([B, C, H, D], None)."""
    sp = _ACTIVE
    if sp is None or sp.layout is None:  # eval, generation: the model's own attention
        return _original_function(module)(module, query, key, value, attention_mask, **kw)
    import torch

    q_split, kv_split = exchange.head_split(query.shape[1], key.shape[1], sp.size)
    q = exchange.gather_sequence(query, sp, q_split)
    k, v = (exchange.gather_sequence(t, sp, kv_split) for t in (key, value))
    layout = sp.layout
    if layout.whole_rows:
        out = _causal(module, q, k, v, kw)
    else:  # packed rows: each example attends causally within itself
        rows = []
        for b, segments in enumerate(layout.rows):
            rows.append(
                torch.cat(
                    [
                        _causal(
                            module,
                            q[b : b + 1, :, s:e],
                            k[b : b + 1, :, s:e],
                            v[b : b + 1, :, s:e],
                            kw,
                        )
                        for s, e in segments
                    ],
                    dim=1,
                )
            )
        out = torch.cat(rows, dim=0)
    return exchange.scatter_sequence(out.contiguous(), sp, q_split), None


def _mask(*args: Any, **kwargs: Any) -> Any:
    """transformers' mask interface: none while sliced (the wrapper masks per example), the
    original implementation's mask otherwise."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    sp = _ACTIVE
    if sp is not None and sp.layout is not None:
        return None
    return ALL_MASK_ATTENTION_FUNCTIONS[_ORIGINAL or "eager"](*args, **kwargs)


# -- set-up -------------------------------------------------------------------------------------
def start(size: int, model: Any, ctx: Any) -> SequenceParallel | None:
    """The run's sequence-parallel groups (None for size 1), with `model` switched to the
    Ulysses attention. Every rank calls it (creating a process group is collective)."""
    global _ACTIVE
    _ACTIVE = None
    if size <= 1:
        return None
    import torch.distributed as dist

    world = ctx.world
    where = f"{ctx.recipe.path}: [strategy] sequence_parallel"
    if world.world_size % size:
        raise TuneError(
            f"sequence_parallel = {size} does not divide the {world.world_size} processes.",
            where=where,
            fix=f"launch a multiple of {size} processes, or set sequence_parallel to a divisor "
            f"of {world.world_size}.",
        )
    config = _text_config(model)
    problem = model_problem(_config_dict(config), size, ctx.recipe.model.max_seq_len)
    if problem:
        raise TuneError(f"sequence_parallel = {size}: {problem}.", where=where, fix=FIX)
    mine = None
    for first in range(0, world.world_size, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= world.rank < first + size:
            mine = group
    sp = SequenceParallel(size, world.rank, world.world_size, mine)
    _install(config)
    _ACTIVE = sp
    return sp


FIX = "set [strategy] sequence_parallel to a number that divides it (or 1)"


def _text_config(model: Any) -> Any:
    from tune.train.chunked_loss import unwrap

    config = unwrap(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def model_problem(config: dict[str, Any], size: int, max_seq_len: int = 0) -> str | None:
    """Why a model of this config cannot split its sequences over `size` ranks (None: it can).
    Read from the config alone, so `tune validate` asks it too."""
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    if isinstance(kv, int) and kv < size:
        return (
            f"the model has {kv} key/value heads, fewer than the {size} ranks (Ulysses gives each "
            "rank whole key/value heads, with the query heads that read them, over the whole "
            "sequence)"
        )
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        return f"the model's {heads} attention heads are not a multiple of its {kv} key/value heads"
    window = config.get("sliding_window")
    types = config.get("layer_types") or []
    sliding = config.get("use_sliding_window", True) or "sliding_attention" in types
    if window and sliding and window < max_seq_len:
        return (
            f"the model attends within a sliding window of {window} positions (below "
            f"max_seq_len = {max_seq_len}), which the sequence-parallel attention (causal over "
            "each whole example) does not apply"
        )
    if any(k in config for k in ("num_experts", "num_local_experts")) and config.get(
        "output_router_logits"
    ):
        return (
            "a mixture-of-experts model's load-balancing loss is a product of per-batch "
            "averages over all tokens, not a sum over slices"
        )
    return None


def _install(config: Any) -> None:
    """Register the Ulysses attention and its mask function; switch `config` to them."""
    global _ORIGINAL
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    current = config._attn_implementation
    if current != ATTENTION:
        if current not in (None, "eager", "sdpa"):
            raise TuneError(
                f"sequence parallelism wraps sdpa or eager attention, but the model runs "
                f"{current!r}.",
                where="[model] attn_implementation",
                fix='load the model with attn_implementation = "sdpa".',
            )
        _ORIGINAL = current or "eager"
    AttentionInterface.register(ATTENTION, ulysses_attention)
    AttentionMaskInterface.register(ATTENTION, _mask)
    config._attn_implementation = ATTENTION


def check_recipe(recipe: Any, size: int) -> None:
    """At `tune validate`: what refuses `sequence_parallel = size` before anything loads (the
    model's heads where its config is known here, an adapter that extends positions). The
    world size and a hub model's config are checked when the run starts. Imports no torch."""
    if size <= 1:
        return
    where = f"{recipe.path}: [strategy] sequence_parallel"
    for selected in recipe.backends.get("adapt", []):
        if selected.capabilities.extends_positions:
            raise TuneError(
                f"sequence_parallel = {size} cannot run with [[adapt]] method = "
                f"'{selected.backend.name}': an adapter that extends positions by compressing "
                "context reads the sequence window by window in order, each window using the "
                "memory of the ones before, so no rank can work on a slice of it alone.",
                where=where,
                fix="drop sequence_parallel (the adapter already bounds attention to its window), "
                "or use [model] rope_scaling instead of the adapter.",
            )
    config = known_config(recipe)
    problem = model_problem(config, size, recipe.model.max_seq_len) if config else None
    if problem:
        raise TuneError(f"sequence_parallel = {size}: {problem}.", where=where, fix=FIX)


def known_config(recipe: Any) -> dict[str, Any] | None:
    """The model's config where it is known without loading: a tiny model or a local folder."""
    path = str(recipe.model.path)
    if path.startswith("tune:"):
        from tune.builtin.tiny import ARCHS, BASE_CONFIG

        arch = ARCHS.get(path.removeprefix("tune:"), {})
        return {**BASE_CONFIG, **arch.get("config", {})}
    from pathlib import Path

    from tune.model.checks import read_config

    for folder in (Path(recipe.path).parent / path, Path(path).expanduser()):
        if folder.is_dir():
            return read_config(folder)
    return None


def stop() -> None:
    """Forget the groups (the strategy destroys the process groups at teardown)."""
    global _ACTIVE
    _ACTIVE = None
