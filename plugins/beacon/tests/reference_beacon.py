"""A second, deliberately plain Activation Beacon forward, to check tune's against.

Written from the paper and the authors' description of their layout rules, independently of
`tune_plugin_beacon.model` (only the model's own modules and the beacon weights `attach` adds are
shared). Every rule is spelled out per token, in loops, with an explicit attention matrix and a
hand-written softmax; nothing here is fast, and nothing here is reused by the plugin.

The rules, per window of `window` raw tokens, with compression ratio r:
- interleave: a beacon follows every r-th raw token; append: r-th of the window's length in
  beacons follows a complete window (a partial window has none).
- memory: every token sees the memory (the sinks of the first window, then the beacons of
  each completed window, in order); memory positions are 0..m-1, the window continues at m.
- full-coverage: the window is plain causal, positions count every token of the window.
- step-expansion, append: beacon i sees raw tokens 0..(i+1)r-1 of its window and beacons 0..i,
  and its position is that of raw token (i+1)r-1 plus i+1 (just after the span it covers, as if
  the beacons before it were interleaved).
- step-expansion, interleave: raw tokens count positions as if there were no beacons; a beacon
  takes the position of the raw token after it; no token sees a beacon of the current window,
  except the beacon itself.
- a completed window adds to memory its beacons (r > 0) or its raw tokens (r = 0); the first
  window also adds its first `sink` raw tokens, ahead of its beacons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Token:
    beacon: bool
    index: int  # raw index in the window, or beacon index in the window


def lay_out(n_raw: int, window: int, ratio: int, pos: str) -> list[Token]:
    tokens: list[Token] = []
    if ratio == 0:
        return [Token(False, j) for j in range(n_raw)]
    if pos == "interleave":
        for j in range(n_raw):
            tokens.append(Token(False, j))
            if (j + 1) % ratio == 0:
                tokens.append(Token(True, (j + 1) // ratio - 1))
        return tokens
    tokens = [Token(False, j) for j in range(n_raw)]
    if n_raw == window:
        tokens += [Token(True, i) for i in range(n_raw // ratio)]
    return tokens


def position(tokens: list[Token], at: int, ratio: int, attn: str, pos: str) -> int:
    """Position of tokens[at] relative to the window's first position."""
    token = tokens[at]
    if attn == "full-coverage" or ratio == 0:
        return at
    if not token.beacon:
        return token.index
    last_covered = (token.index + 1) * ratio - 1  # the raw token the beacon follows
    if pos == "append":
        return last_covered + token.index + 1  # and one place per beacon up to itself
    return last_covered + 1  # shares the place of the next raw token


def sees(tokens: list[Token], query: int, key: int, ratio: int, attn: str, pos: str) -> bool:
    if key > query:
        return False
    if attn == "full-coverage" or ratio == 0:
        return True
    q, k = tokens[query], tokens[key]
    if pos == "interleave":
        return not k.beacon or key == query
    if q.beacon and not k.beacon:
        return k.index < (q.index + 1) * ratio
    return True


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


@torch.no_grad()
def reference_forward(model, ids: torch.Tensor, ratio: int) -> dict:
    """Logits of every raw token of `ids` (one row), memory length per layer and the largest
    position used, by the rules above."""
    cfg = model.beacon_config
    decoder = model.model
    layers = decoder.layers
    memory: list[list[torch.Tensor]] = [[] for _ in layers]  # per layer: (2, kv_heads, d) per token
    logits, largest, seen = [], 0, 0
    row = ids[0]
    for start in range(0, row.shape[0], cfg.window):
        raw = row[start : start + cfg.window]
        tokens = lay_out(raw.shape[0], cfg.window, ratio, cfg.pos)
        m = len(memory[0])
        positions = [m + position(tokens, i, ratio, cfg.attn, cfg.pos) for i in range(len(tokens))]
        largest = max([largest, *positions])
        n = len(tokens)
        allowed = torch.zeros(n, m + n, dtype=torch.bool)
        for i in range(n):
            allowed[i, :m] = True
            for j in range(n):
                allowed[i, m + j] = sees(tokens, i, j, ratio, cfg.attn, cfg.pos)
        hidden = torch.stack(
            [
                decoder.beacon_embedding.float()
                if t.beacon
                else decoder.embed_tokens.weight[raw[t.index]].float()
                for t in tokens
            ]
        )
        all_positions = torch.tensor(list(range(m)) + positions)
        cos, sin = decoder.rotary_emb(hidden[None], all_positions[None])
        cos, sin = cos[0], sin[0]
        kept_kv = []
        for li, layer in enumerate(layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)

            def project(name, inputs, attn=attn, tokens=tokens):
                chosen = [
                    getattr(attn, f"beacon_{name}", getattr(attn, name))
                    if t.beacon
                    else getattr(attn, name)
                    for t in tokens
                ]
                return torch.stack([f(inputs[i]) for i, f in enumerate(chosen)])

            d = attn.head_dim
            q = project("q_proj", x).view(n, -1, d)
            k = project("k_proj", x).view(n, -1, d)
            v = project("v_proj", x).view(n, -1, d)
            kept_kv.append((k, v))
            if m:
                mem = torch.stack(memory[li])  # (m, 2, kv_heads, d)
                keys, values = torch.cat([mem[:, 0], k]), torch.cat([mem[:, 1], v])
            else:
                keys, values = k, v
            keys = _rotate(keys, cos[:, None], sin[:, None])
            queries = _rotate(q, cos[m:, None], sin[m:, None])
            groups = queries.shape[1] // keys.shape[1]
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
            scores = torch.einsum("qhd,khd->hqk", queries, keys) * attn.scaling
            scores = scores.masked_fill(~allowed[None], float("-inf"))
            weights = torch.exp(scores - scores.amax(-1, keepdim=True))
            weights = weights / weights.sum(-1, keepdim=True)
            out = torch.einsum("hqk,khd->qhd", weights, values).reshape(n, -1)
            hidden = hidden + project("o_proj", out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        final = decoder.norm(hidden)
        logits += [model.lm_head(final[i]) for i, t in enumerate(tokens) if not t.beacon]
        if raw.shape[0] == cfg.window:
            keep = [i for i, t in enumerate(tokens) if t.beacon == (ratio > 0)]
            if seen == 0 and ratio > 0 and cfg.sink_size:
                sinks = [i for i, t in enumerate(tokens) if not t.beacon][: cfg.sink_size]
                keep = sorted(set(keep) | set(sinks))
            for li, (k, v) in enumerate(kept_kv):
                memory[li] += [torch.stack([k[i], v[i]]) for i in keep]
            seen += cfg.window
    return {
        "logits": torch.stack(logits)[None],
        "memory_len": len(memory[0]),
        "max_position": largest,
    }
