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
    inference_ratio: int | str = "adapt"  # an int, or "adapt" (chosen once per sequence)
    pos: str = "interleave"  # interleave | append
    attn: str = "full-coverage"  # full-coverage | step-expansion
    params: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    sink_size: int | None = None  # None: by architecture (see default_sink_size)
    adapt_headroom: int = 1024  # tokens "adapt" leaves room for after the input
    seed: int = 0

    def usable_ratios(self) -> list[int]:
        """Training ratios that divide the window (0 = no compression is always allowed)."""
        return [r for r in self.ratios if r == 0 or self.window % r == 0]


def default_sink_size(config: Any) -> int:
    """The authors' finding: Llama-3 needs an attention sink (one token), Llama-2, Mistral and
    Qwen2 train without. Llama-3 is told apart by its 128k vocabulary or its rope scaling."""
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    llama3 = getattr(config, "vocab_size", 0) >= 128_000 or rope.get("rope_type") == "llama3"
    return 1 if getattr(config, "model_type", "") == "llama" and llama3 else 0


def _decoder(model: nn.Module) -> nn.Module:
    return model.model


def attach(model: nn.Module, cfg: BeaconConfig) -> nn.Module:
    """Add the beacon embedding and projections to `model` (in place) and switch its forward."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUPPORTED:
        raise ValueError(f"beacon supports {SUPPORTED}, not {model_type!r}")
    if cfg.sink_size is None:
        cfg.sink_size = default_sink_size(model.config)
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
    time: each new token runs alone against the memory and its window's cached KV, with beacons
    added as the window fills. The adaptive ratio leaves room for `max_new_tokens`."""
    stops = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, (list, tuple)) else [stops]) - {None}
    out = model(input_ids=input_ids, beacon_headroom=max_new_tokens)
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
@dataclass
class Layout:
    """A window's tokens (raw and beacons) as the reference lays them out.

    `positions` are relative to the window's first position (the memory's length); `mask[i, j]`
    says whether token i may attend to token j of the same window (memory is always visible).
    Every rule is causal in the layout order, and the layout of a window's first tokens does not
    change when more tokens arrive, so a window can be run piece by piece (decoding) exactly.
    """

    is_beacon: torch.Tensor  # (L,) bool
    positions: torch.Tensor  # (L,) long
    mask: torch.Tensor  # (L - first_row, L) bool


def window_layout(
    n_raw: int, ratio: int, cfg: BeaconConfig, complete: bool, first_row: int = 0
) -> Layout:
    """Interleave: a beacon after every `ratio` raw tokens present (so decoding adds them on the
    fly). Append: `n_raw // ratio` beacons after the raw tokens, once the window is whole.

    Full-coverage: plain causal attention and consecutive positions over the laid-out window.
    Step-expansion, append: beacon i sees the raw tokens [0, (i+1)r) and the beacons up to
    itself, and sits right after the raw span it covers: position (i+1)(r+1) - 1, the place it
    would have if interleaved. Step-expansion, interleave: no token sees the window's beacons
    (a beacon sees itself), raw tokens keep consecutive positions, and a beacon shares the
    position of the raw token after it.

    `mask` holds only the rows from `first_row` on (decoding needs the new tokens' rows alone).
    """
    if ratio == 0:
        n_beacons, flags = 0, torch.zeros(n_raw, dtype=torch.bool)
    elif cfg.pos == "append":
        n_beacons = n_raw // ratio if complete else 0
        flags = torch.zeros(n_raw + n_beacons, dtype=torch.bool)
        flags[n_raw:] = True
    else:
        n_beacons = n_raw // ratio
        flags = torch.zeros(n_raw + n_beacons, dtype=torch.bool)
        flags[torch.arange(1, n_beacons + 1) * (ratio + 1) - 1] = True
    length = flags.shape[0]
    positions = torch.arange(length)
    rows = torch.arange(first_row, length)
    mask = rows[:, None] >= torch.arange(length)[None, :]
    if cfg.attn == "step-expansion" and n_beacons:
        order = torch.arange(1, n_beacons + 1)
        if cfg.pos == "append":
            positions[n_raw:] = order * (ratio + 1) - 1
            beacon_rows = rows >= n_raw
            covered = torch.arange(n_raw)[None, :] < ((rows - n_raw + 1) * ratio)[:, None]
            mask[:, :n_raw] = torch.where(beacon_rows[:, None], covered, mask[:, :n_raw])
        else:
            raw = (~flags).long()
            positions = torch.cumsum(raw, 0) - raw
            mask[:, flags] = False
            mask[flags[first_row:], rows[flags[first_row:]]] = True
    return Layout(flags, positions, mask)


# -- the forward ------------------------------------------------------------------------------------
@dataclass
class BeaconState:
    """What a sequence leaves behind for its continuation: per layer, the memory (sinks and
    beacons of completed windows, pre-RoPE) and the pre-RoPE KV of the window being read, so a
    new token runs alone through the layers instead of re-running its window."""

    memory_k: list[torch.Tensor | None]
    memory_v: list[torch.Tensor | None]
    window_k: list[torch.Tensor] | None = None  # tokens of the current, incomplete window
    window_v: list[torch.Tensor] | None = None
    window_raw: int = 0  # raw tokens in the current window
    window_ratio: int = 0  # the ratio the current window started with
    ratio: int | None = None  # the inference ratio, chosen once per sequence
    seen: int = 0  # raw tokens consumed by completed windows
    max_position: int = 0  # the largest position id used so far

    @classmethod
    def empty(cls, n_layers: int) -> BeaconState:
        return cls([None] * n_layers, [None] * n_layers)

    def memory_len(self) -> int:
        return 0 if self.memory_k[0] is None else int(self.memory_k[0].shape[2])

    def window_len(self) -> int:
        return 0 if self.window_k is None else int(self.window_k[0].shape[2])


def adapt_ratio(cfg: BeaconConfig, n_total: int, limit: int) -> int:
    """The smallest ratio whose compressed sequence (`n_total` tokens, generated ones included)
    stays inside the base model's `limit` positions; the largest when none does."""
    ratios = sorted(r for r in cfg.usable_ratios() if r > 0)
    for r in ratios:
        if cfg.sink_size + math.ceil(n_total / r) + cfg.window + cfg.window // r <= limit:
            return r
    return ratios[-1] if ratios else 0


def choose_ratio(model: nn.Module, state: BeaconState, n_total: int) -> int:
    """Training: a ratio per window (step-random) or the first (fixed). Inference: the fixed
    inference ratio or "adapt", chosen once for the sequence (`n_total` raw tokens expected)."""
    cfg: BeaconConfig = model.beacon_config
    if model.training and cfg.ratio_mix == "step-random":
        return model.beacon_rng.choice(cfg.usable_ratios())
    if model.training and cfg.ratio_mix == "fixed":
        return cfg.usable_ratios()[0]
    if state.ratio is None:
        if cfg.inference_ratio == "adapt":
            limit = getattr(model.config, "max_position_embeddings", 4096)
            state.ratio = adapt_ratio(cfg, n_total, limit)
        else:
            state.ratio = int(cfg.inference_ratio)
    return state.ratio


def _proj(attn: nn.Module, name: str, x: torch.Tensor, is_beacon: torch.Tensor) -> torch.Tensor:
    """The base projection for raw tokens, its beacon copy (if any) for beacon tokens."""
    beacon = getattr(attn, f"beacon_{name}", None)
    if beacon is None or not bool(is_beacon.any()):
        return getattr(attn, name)(x)
    if bool(is_beacon.all()):
        return beacon(x)
    out = getattr(attn, name)(x).clone()
    out[:, is_beacon] = beacon(x[:, is_beacon])
    return out


def _rope(q_or_k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q_or_k.shape[-1] // 2
    rotated = torch.cat((-q_or_k[..., half:], q_or_k[..., :half]), dim=-1)
    return q_or_k * cos + rotated * sin


def _cat(parts: list[torch.Tensor | None], dtype: torch.dtype) -> torch.Tensor:
    present = [p.to(dtype) for p in parts if p is not None]
    return present[0] if len(present) == 1 else torch.cat(present, dim=2)


def run_segment(
    model: nn.Module, raw_ids: torch.Tensor, ratio: int, state: BeaconState, complete: bool
) -> torch.Tensor:
    """The next raw tokens of the current window through every layer; returns their final
    hidden states. Only the new tokens (and the beacons they bring) are computed: earlier tokens
    of the window are in `state` as pre-RoPE KV. A complete window commits what it keeps to
    memory (its beacons' KV, or its raw KV when ratio = 0, plus the sinks of the first window).
    """
    cfg: BeaconConfig = model.beacon_config
    decoder = _decoder(model)
    device = raw_ids.device
    cached = state.window_len()
    layout = window_layout(state.window_raw + raw_ids.shape[1], ratio, cfg, complete, cached)
    is_beacon = layout.is_beacon[cached:].to(device)
    batch, length = raw_ids.shape[0], layout.is_beacon.shape[0] - cached
    raw_embeds = decoder.embed_tokens(raw_ids)
    if bool(is_beacon.any()):
        hidden = raw_embeds.new_zeros(batch, length, raw_embeds.shape[-1])
        hidden[:, ~is_beacon] = raw_embeds
        hidden[:, is_beacon] = decoder.beacon_embedding.to(hidden.dtype)
    else:
        hidden = raw_embeds
    memory_len = state.memory_len()
    positions = torch.cat([torch.arange(memory_len), memory_len + layout.positions])
    cos, sin = decoder.rotary_emb(hidden, positions.to(device).unsqueeze(0))
    q_cos, q_sin = cos[:, memory_len + cached :], sin[:, memory_len + cached :]
    mask = torch.cat([torch.ones(length, memory_len, dtype=torch.bool), layout.mask], dim=1).to(
        device
    )
    state.max_position = max(state.max_position, int(positions.max()))

    def layer_step(layer, hidden, mem_k, mem_v, win_k, win_v):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        head_dim = attn.head_dim
        q = _proj(attn, "q_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        k = _proj(attn, "k_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        v = _proj(attn, "v_proj", x, is_beacon).view(batch, length, -1, head_dim).transpose(1, 2)
        k_all = _rope(_cat([mem_k, win_k, k], k.dtype), cos, sin)
        v_all = _cat([mem_v, win_v, v], v.dtype)
        q = _rope(q, q_cos, q_sin)
        groups = q.shape[1] // k_all.shape[1]
        if groups > 1:
            k_all = k_all.repeat_interleave(groups, dim=1)
            v_all = v_all.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        hidden = hidden + _proj(attn, "o_proj", out, is_beacon)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, k, v

    checkpointing = model.training and bool(
        getattr(model, "is_activation_checkpointing", None)
        or getattr(model, "is_gradient_checkpointing", False)
    )
    window_k, window_v = [], []
    for i, layer in enumerate(decoder.layers):
        win_k = state.window_k[i] if cached else None
        win_v = state.window_v[i] if cached else None
        args = (layer, hidden, state.memory_k[i], state.memory_v[i], win_k, win_v)
        if checkpointing:  # recompute each layer-window in backward: memory stays flat
            hidden, k_new, v_new = torch.utils.checkpoint.checkpoint(
                layer_step, *args, use_reentrant=False
            )
        else:
            hidden, k_new, v_new = layer_step(*args)
        window_k.append(k_new if win_k is None else torch.cat([win_k, k_new], dim=2))
        window_v.append(v_new if win_v is None else torch.cat([win_v, v_new], dim=2))
    n_raw = state.window_raw + raw_ids.shape[1]
    if complete:
        keep = layout.is_beacon.clone() if ratio > 0 else ~layout.is_beacon
        if cfg.sink_size and state.seen == 0 and ratio > 0:
            keep[(~layout.is_beacon).nonzero().flatten()[: cfg.sink_size]] = True
        kept = [(k[:, :, keep], v[:, :, keep]) for k, v in zip(window_k, window_v, strict=True)]
        commit(state, kept, n_raw)
        state.window_k = state.window_v = None
        state.window_raw = 0
    else:
        state.window_k, state.window_v = window_k, window_v
        state.window_raw, state.window_ratio = n_raw, ratio
    return decoder.norm(hidden)[:, ~is_beacon]


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
    headroom: int | None = None,
) -> tuple[torch.Tensor, BeaconState]:
    """Hidden states of every raw token of `input_ids` (one autograd graph across windows).

    Continues `state` (memory and the current window's KV) when given, which is how
    prompt-then-decode works. `ratios` fixes the ratio of each window this call starts;
    `headroom` is how many tokens may follow (the adaptive ratio leaves positions for them).
    """
    cfg: BeaconConfig = model.beacon_config
    state = state or BeaconState.empty(len(_decoder(model).layers))
    if headroom is None:
        headroom = cfg.adapt_headroom
    total = state.seen + state.window_raw + input_ids.shape[1] + headroom
    outputs, start, started = [], 0, 0
    while start < input_ids.shape[1]:
        chunk = input_ids[:, start : start + cfg.window - state.window_raw]
        complete = state.window_raw + chunk.shape[1] == cfg.window
        if state.window_raw:
            ratio = state.window_ratio
        elif ratios is not None and started < len(ratios):
            ratio = ratios[started]
        else:
            ratio = choose_ratio(model, state, total)
        started += not state.window_raw
        outputs.append(run_segment(model, chunk, ratio, state, complete))
        start += chunk.shape[1]
    hidden = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return hidden, state


def beacon_forward(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    attention_mask: torch.Tensor | None = None,
    beacon_state: BeaconState | None = None,
    beacon_ratios: list[int] | None = None,
    beacon_headroom: int | None = None,
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
    hidden, state = encode(model, input_ids, beacon_state, beacon_ratios, beacon_headroom)
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
