"""Activation Beacon on a transformers Llama / Mistral / Qwen2 model.

The input is read in windows of `window` raw tokens. Beacon tokens are placed in each window
(interleaved: one after every r raw tokens; or appended: w/r after the window). At every layer
their key/value activations condense the window; when the window is done, its raw KV is
dropped and only the beacons' KV stays as memory for later windows. Memory is kept per layer
*before* RoPE, and every window re-positions [memory | window] as 0..m+L-1, so positions stay
small however long the input. A token uses the beacon copies of the q/k/v(/o) projections iff
it is a beacon; norms and MLPs are shared. r = 0 keeps the window's raw KV (no compression).

The decoder layers' own modules (norms, projections, MLP, rotary embedding) are used as they
are; only the attention wiring (memory, masks, re-positioning, beacon projections) is ours.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

PROJ_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
SUPPORTED = ("llama", "mistral", "qwen2")


@dataclass
class BeaconConfig:
    window: int = 1024
    stride: int | None = None  # = window (the released setting)
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    ratio_mix: str = "step-random"  # step-random | fixed | adapt
    inference_ratio: int | str = 8  # an int, or "adapt"
    pos: str = "interleave"  # interleave | append
    attn: str = "full-coverage"  # full-coverage | step-expansion
    params: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    sink_size: int = 0
    seed: int = 0

    def usable_ratios(self) -> list[int]:
        """Training ratios that divide the window (0 = no compression is always allowed)."""
        return [r for r in self.ratios if r == 0 or self.window % r == 0]


def _decoder(model: nn.Module) -> nn.Module:
    return model.model


def attach(model: nn.Module, cfg: BeaconConfig) -> nn.Module:
    """Add the beacon embedding and projections to `model` (in place) and switch its forward."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUPPORTED:
        raise ValueError(f"beacon supports {SUPPORTED}, not {model_type!r}")
    decoder = _decoder(model)
    embed = decoder.embed_tokens.weight
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    decoder.beacon_embedding = nn.Parameter(embed.detach()[eos].clone().float().to(embed.dtype))
    for layer in decoder.layers:
        attn = layer.self_attn
        for short in cfg.params:
            name = PROJ_NAMES[short]
            clone = copy.deepcopy(getattr(attn, name))
            for p in clone.parameters():
                p.requires_grad_(True)
            setattr(attn, f"beacon_{name}", clone)
    model.beacon_config = cfg
    model._plain_forward = model.forward
    model.forward = _BoundForward(model)
    model.generate = _BoundGenerate(model)
    model.beacon_rng = random.Random(cfg.seed)
    return model


def find_beacon_model(model: nn.Module) -> nn.Module | None:
    """The causal LM carrying the beacon, inside whatever wraps it (PEFT, DDP)."""
    return next((m for m in model.modules() if hasattr(m, "beacon_config")), None)


class _BoundGenerate:
    def __init__(self, model: nn.Module):
        self.model_ref = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return generate(self.model_ref, *args, **kwargs)


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    eos_token_id: Any = None,
    **_: Any,
) -> torch.Tensor:
    """Greedy decoding for prompts of any length: prefill window by window, then one token at a
    time with beacons inserted on the fly as the current window fills."""
    stops = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, (list, tuple)) else [stops]) - {None}
    out = model(input_ids=input_ids)
    state, tokens = out.beacon_state, [input_ids]
    for _ in range(max_new_tokens):
        nxt = out.logits[:, -1:].argmax(-1)
        tokens.append(nxt)
        if int(nxt[0, 0]) in stops:
            break
        out = model(input_ids=nxt, beacon_state=state)
        state = out.beacon_state
    return torch.cat(tokens, dim=1)


def beacon_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "beacon_" in n}


class _BoundForward:
    """`model.forward` replacement (an object, so it survives deepcopy/pickling of the module)."""

    def __init__(self, model: nn.Module):
        self.model_ref = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return beacon_forward(self.model_ref, *args, **kwargs)


# -- layout of one window -------------------------------------------------------------------------
def window_layout(n_raw: int, ratio: int, cfg: BeaconConfig, complete: bool) -> torch.Tensor:
    """Boolean `is_beacon` for the window's sequence of raw tokens and beacons.

    Interleave: a beacon after every `ratio` raw tokens present (so decoding can add them on the
    fly). Append: `window // ratio` beacons after the raw tokens, only once the window is whole.
    """
    if ratio == 0:
        return torch.zeros(n_raw, dtype=torch.bool)
    if cfg.pos == "append":
        n_beacons = n_raw // ratio if complete else 0
        return torch.cat(
            [torch.zeros(n_raw, dtype=torch.bool), torch.ones(n_beacons, dtype=torch.bool)]
        )
    flags = []
    for j in range(n_raw):
        flags.append(False)
        if (j + 1) % ratio == 0:
            flags.append(True)
    return torch.tensor(flags, dtype=torch.bool)


def window_mask(
    is_beacon: torch.Tensor, memory_len: int, ratio: int, cfg: BeaconConfig
) -> torch.Tensor:
    """(L, memory_len + L) boolean: memory fully visible; causal within the window.

    step-expansion (append mode): beacon i sees raw tokens [0, (i+1)*r) of its window and the
    beacons before it, instead of every raw token of the window.
    """
    length = is_beacon.shape[0]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if cfg.attn == "step-expansion" and cfg.pos == "append" and ratio > 0 and bool(is_beacon.any()):
        raw = (~is_beacon).nonzero().flatten()
        beacons = is_beacon.nonzero().flatten()
        for i, b in enumerate(beacons.tolist()):
            causal[b, raw[(i + 1) * ratio :]] = False
    memory = torch.ones(length, memory_len, dtype=torch.bool)
    return torch.cat([memory, causal], dim=1)


# -- the forward ------------------------------------------------------------------------------------
@dataclass
class BeaconState:
    """Per-layer pre-RoPE memory, plus the raw tokens of the window still being read."""

    memory_k: list[torch.Tensor | None]
    memory_v: list[torch.Tensor | None]
    pending: torch.Tensor | None = None  # raw token ids of the current, incomplete window
    seen: int = 0  # raw tokens consumed by completed windows
    max_position: int = 0  # the largest position id used so far

    @classmethod
    def empty(cls, n_layers: int) -> BeaconState:
        return cls([None] * n_layers, [None] * n_layers)

    def memory_len(self) -> int:
        return 0 if self.memory_k[0] is None else int(self.memory_k[0].shape[2])


def choose_ratio(model: nn.Module, n_total: int) -> int:
    cfg: BeaconConfig = model.beacon_config
    if model.training and cfg.ratio_mix == "step-random":
        return model.beacon_rng.choice(cfg.usable_ratios())
    if model.training and cfg.ratio_mix == "fixed":
        return cfg.usable_ratios()[0]
    if cfg.inference_ratio == "adapt":
        # the smallest ratio whose compressed input fits the base model's positions
        limit = getattr(model.config, "max_position_embeddings", 4096)
        for r in sorted(r for r in cfg.usable_ratios() if r > 0):
            if cfg.sink_size + n_total // r + cfg.window + cfg.window // r <= limit:
                return r
        return max(cfg.usable_ratios())
    return int(cfg.inference_ratio)


def _proj(attn: nn.Module, name: str, x: torch.Tensor, is_beacon: torch.Tensor) -> torch.Tensor:
    """The base projection for raw tokens, its beacon copy (if any) for beacon tokens."""
    base = getattr(attn, name)(x)
    beacon = getattr(attn, f"beacon_{name}", None)
    if beacon is None or not bool(is_beacon.any()):
        return base
    out = base.clone()
    out[:, is_beacon] = beacon(x[:, is_beacon])
    return out


def _rope(q_or_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q_or_k.shape[-1] // 2
    rotated = torch.cat((-q_or_k[..., half:], q_or_k[..., :half]), dim=-1)
    return q_or_k * cos + rotated * sin


def run_window(
    model: nn.Module, raw_ids: torch.Tensor, ratio: int, state: BeaconState, complete: bool
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One window through every layer; returns (final hidden of raw tokens, per-layer new KV).

    The new KV (pre-RoPE) is what this window adds to memory if it is complete: its beacons'
    KV, or its raw KV when ratio = 0 (plus the sinks for the very first window).
    """
    cfg: BeaconConfig = model.beacon_config
    decoder = _decoder(model)
    is_beacon = window_layout(raw_ids.shape[1], ratio, cfg, complete).to(raw_ids.device)
    batch = raw_ids.shape[0]
    raw_embeds = decoder.embed_tokens(raw_ids)
    hidden = raw_embeds.new_zeros(batch, is_beacon.shape[0], raw_embeds.shape[-1])
    hidden[:, ~is_beacon] = raw_embeds
    if bool(is_beacon.any()):
        hidden[:, is_beacon] = decoder.beacon_embedding.to(hidden.dtype)
    memory_len = state.memory_len()
    length = is_beacon.shape[0]
    positions = torch.arange(memory_len + length, device=raw_ids.device).unsqueeze(0)
    cos, sin = decoder.rotary_emb(hidden, positions)
    mask = window_mask(is_beacon.cpu(), memory_len, ratio, cfg).to(raw_ids.device)
    keep = is_beacon if ratio > 0 else ~is_beacon
    if cfg.sink_size and state.seen == 0 and ratio > 0:
        sinks = (~is_beacon).nonzero().flatten()[: cfg.sink_size]
        keep = keep.clone()
        keep[sinks] = True
    state.max_position = max(state.max_position, memory_len + length - 1)

    def layer_step(layer, hidden, mem_k, mem_v):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        head_dim = attn.head_dim
        q = _proj(attn, "q_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        k = _proj(attn, "k_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        v = _proj(attn, "v_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        k_all = k if mem_k is None else torch.cat([mem_k.to(k.dtype), k], dim=2)
        v_all = v if mem_v is None else torch.cat([mem_v.to(v.dtype), v], dim=2)
        q = _rope(q, cos[:, memory_len:], sin[:, memory_len:])
        k_all = _rope(k_all, cos, sin)
        groups = q.shape[1] // k_all.shape[1]
        if groups > 1:
            k_all = k_all.repeat_interleave(groups, dim=1)
            v_all = v_all.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        hidden = hidden + _proj(attn, "o_proj", out, is_beacon)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, k[:, :, keep], v[:, :, keep]

    checkpointing = model.training and bool(
        getattr(model, "is_activation_checkpointing", None)
        or getattr(model, "is_gradient_checkpointing", False)
    )
    new_kv = []
    for i, layer in enumerate(decoder.layers):
        args = (layer, hidden, state.memory_k[i], state.memory_v[i])
        if checkpointing:  # recompute each layer-window in backward: memory stays flat
            hidden, k_new, v_new = torch.utils.checkpoint.checkpoint(
                layer_step, *args, use_reentrant=False
            )
        else:
            hidden, k_new, v_new = layer_step(*args)
        new_kv.append((k_new, v_new))
    hidden = decoder.norm(hidden)
    return hidden[:, ~is_beacon], new_kv


def commit(state: BeaconState, new_kv: list[tuple[torch.Tensor, torch.Tensor]], n_raw: int) -> None:
    for i, (k, v) in enumerate(new_kv):
        if state.memory_k[i] is None:
            state.memory_k[i], state.memory_v[i] = k, v
        else:
            state.memory_k[i] = torch.cat([state.memory_k[i], k], dim=2)
            state.memory_v[i] = torch.cat([state.memory_v[i], v], dim=2)
    state.seen += n_raw


def encode(
    model: nn.Module,
    input_ids: torch.Tensor,
    state: BeaconState | None = None,
    ratios: list[int] | None = None,
) -> tuple[torch.Tensor, BeaconState]:
    """Hidden states of every raw token of `input_ids` (one autograd graph across windows).

    Continues `state` (memory and the pending partial window) when given, which is how
    prompt-then-decode works: the partial window is recomputed with the new tokens.
    """
    cfg: BeaconConfig = model.beacon_config
    state = state or BeaconState.empty(len(_decoder(model).layers))
    if state.pending is not None and state.pending.shape[1]:
        input_ids = torch.cat([state.pending, input_ids], dim=1)
        carried = state.pending.shape[1]
    else:
        carried = 0
    total = state.seen + input_ids.shape[1]
    outputs = []
    start, w = 0, cfg.window
    index = 0
    while start < input_ids.shape[1]:
        chunk = input_ids[:, start : start + w]
        complete = chunk.shape[1] == w
        ratio = (
            ratios[index]
            if ratios is not None and index < len(ratios)
            else choose_ratio(model, total)
        )
        hidden, new_kv = run_window(model, chunk, ratio, state, complete)
        outputs.append(hidden)
        if complete:
            commit(state, new_kv, w)
            state.pending = None
        else:
            state.pending = chunk
            state.pending_ratio = ratio
        start += w
        index += 1
    hidden = torch.cat(outputs, dim=1)[:, carried:]
    return hidden, state


def beacon_forward(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    attention_mask: torch.Tensor | None = None,
    beacon_state: BeaconState | None = None,
    beacon_ratios: list[int] | None = None,
    **_: Any,
):
    """Logits for the raw tokens; loss on raw tokens only, summed over all windows.

    The rows of a batch share one ratio per window. A padded batch runs as one pass per group of
    rows with the same number of windows (see `_by_window_count`).
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if attention_mask is not None and not bool(attention_mask.all()):
        if beacon_state is not None:
            raise ValueError("a padded batch cannot continue a beacon state: decode rows alone")
        return _by_window_count(
            model, input_ids, labels, num_items_in_batch, attention_mask, beacon_ratios
        )
    hidden, state = encode(model, input_ids, beacon_state, beacon_ratios)
    logits = model.lm_head(hidden)
    loss = None
    if labels is not None:
        count = num_items_in_batch
        if count is None:
            count = max(1, int((labels[:, 1:] != -100).sum()))
        loss = _summed_loss(logits, labels) / count
    out = CausalLMOutputWithPast(loss=loss, logits=logits)
    out.beacon_state = state
    return out


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")


def _by_window_count(model, input_ids, labels, num_items_in_batch, attention_mask, ratios):
    """A right-padded batch, one pass per group of rows with the same number of windows.

    Such rows share every window boundary, so padding sits only at the end of the last window,
    where causal attention hides it from every real token, and nothing reads memory after it.
    Each row's logits therefore equal the row run alone; padding columns get zero logits.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    lengths = attention_mask.sum(dim=1)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not bool((attention_mask.bool() == (columns < lengths[:, None])).all()):
        raise ValueError("the beacon forward needs right padding (padding_side = 'right')")
    if labels is not None:
        labels = labels.masked_fill(attention_mask == 0, -100)
    count = num_items_in_batch
    if count is None and labels is not None:
        count = max(1, int((labels[:, 1:] != -100).sum()))
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(lengths.tolist()):
        if n:
            groups.setdefault(math.ceil(n / model.beacon_config.window), []).append(row)
    logits, loss = None, None
    for rows in groups.values():
        index = torch.tensor(rows, device=input_ids.device)
        width = int(lengths[index].max())
        hidden, _ = encode(model, input_ids[index, :width], None, ratios)
        part = model.lm_head(hidden)
        if logits is None:
            logits = part.new_zeros(*input_ids.shape, part.shape[-1])
        logits[index, :width] = part
        if labels is not None:
            summed = _summed_loss(part, labels[index, :width])
            loss = summed if loss is None else loss + summed
    return CausalLMOutputWithPast(loss=None if loss is None else loss / count, logits=logits)


def max_position(cfg: BeaconConfig, n_raw: int, ratio: int) -> int:
    """The largest position id a forward over n_raw tokens can use (BEACON.md's bound)."""
    if ratio == 0:
        return n_raw
    return cfg.sink_size + math.ceil(n_raw / ratio) + cfg.window + cfg.window // ratio
