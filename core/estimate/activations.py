"""Saved activations and logits: what autograd keeps between forward and backward.

Per token and decoder layer (element counts, checked against autograd's saved tensors in the
tests): each RMSNorm keeps its input and 1/rms, plus the normalized input when its weight
trains; the norm outputs are kept when the projections after them train (or carry LoRA);
attention keeps rotated q, k, v, its output and one log-sum-exp per head; the gated MLP keeps
gate, up and silu(gate), and their product when down_proj trains (only gate and up with
`[train] lean_activations`, which recomputes the rest); each adapter keeps what it says it
saves (a LoRA its r-wide middle). An objective that takes several sequences per example (a
preference pair) multiplies the rows. With checkpointing only each layer's input is kept, and
one layer is recomputed at a time in backward. Under sequence parallelism every term here is
per rank: seq / N positions of every sequence (`Setup.local_seq`).
"""

from __future__ import annotations

from tune.contract.memory import MemoryTerm as Term
from tune.estimate.setup import Setup

try:  # the chunked loss's own chunk size (a module that imports no torch)
    from tune.train.chunked_loss import CHUNK_ELEMENTS
except ImportError:  # pragma: no cover - older core
    CHUNK_ELEMENTS = 1 << 24


MLP_LINEARS = {"gate_proj", "up_proj", "down_proj"}


def act_elements(s: Setup, full: bool) -> tuple[float, str]:
    """Elements saved for backward per token per decoder layer (without checkpointing).

    RMSNorm saves its input, 1/rms and (trainable weight only) the normalized input, plus its
    output for the projections after it; attention saves rotated q, k, v, its output and the
    log-sum-exp per head; the gated MLP saves gate, up, silu(gate) and their product.
    """
    sh = s.shapes
    h, kv, q, i = sh.hidden, sh.kv_dim, sh.q_dim, sh.intermediate
    adapted = {t for a in s.adapters for t in a.targets}
    trains = {name: full or name in adapted for name in sh.linears}
    norm_w = 2 * h if full else 0
    norm1_out = h if any(trains[n] for n in ("q_proj", "k_proj", "v_proj")) else 0
    if sh.experts:  # a MoE layer: its fused experts train in full or under LoRA, or not at all
        experts_train = full or any(a.layer_copy for a in s.adapters)
        trains.update(dict.fromkeys(("gate_proj", "up_proj", "down_proj"), experts_train))
    norm2_out = h if trains["gate_proj"] or trains["up_proj"] else 0
    down_in = i if trains["down_proj"] else 0
    adapter_mid = sum(a.saved for a in s.adapters)  # e.g. each LoRA's r-wide middle
    if is_tiled(s):  # the MLP's adapters run inside the tiles: recomputed, not kept
        adapter_mid -= sum(
            a.saved * len(MLP_LINEARS & set(a.targets)) // max(1, len(a.targets))
            for a in s.adapters
        )
    elements = 2 * h + 2 + norm_w + norm1_out + norm2_out + q + 2 * kv + q + sh.heads
    # lean activations: only gate and up are kept; silu(gate) and the product are recomputed.
    # tiled MLP: nothing of [tokens, i] is kept (each tile's intermediates are recomputed in
    # backward; one tile's are counted in tile_transient); only its input, the norm output.
    tiled = is_tiled(s)
    mlp = 0 if tiled else 2 if s.lean else 3 + (1 if down_in else 0)
    elements += mlp * i + adapter_mid
    label = " (tiled)" if tiled else " (lean)" if s.lean else ""
    formula = (
        f"norms 2x(h+1{' +h' if full else ''}) + norm outs + attn (2q + 2kv + heads)"
        f" + mlp {mlp}i{label}" + (f" + adapters {adapter_mid}" if adapter_mid else "")
    )
    return elements, formula


def is_tiled(s: Setup) -> bool:
    """`[train] tiled_mlp` (the setup's `tiled`, where the setup carries it)."""
    return bool(getattr(s, "tiled", False))


def tile_transient(s: Setup) -> float:
    """Bytes one MLP tile holds while it runs or is recomputed: gate, up, silu(gate), their
    product and the gradients of two of them, for `tiled_mlp_tokens` rows."""
    ab = 4 if s.precision == "fp32" else 2
    rows = min(int(getattr(s, "tile_tokens", 1024)), s.micro_batch * s.sequences * _seq(s))
    return rows * 6 * s.shapes.intermediate * ab


def activation_terms(s: Setup, full: bool) -> list[Term]:
    sh = s.shapes
    tokens = s.micro_batch * s.sequences * _seq(s)  # sequences: a preference pair is 2
    ab = 4 if s.precision == "fp32" else 2
    per_layer, formula = act_elements(s, full)
    norm_extra = 0 if ab == 4 else 4 * sh.hidden  # fp32 upcast inside RMSNorm under autocast
    layer_bytes = tokens * (per_layer * ab + norm_extra)
    if is_tiled(s):
        layer_bytes += tile_transient(s)
    # Final norm: input, 1/rms, normalized and output (trainable head). With a frozen base only
    # its input and 1/rms, but then layer 0 saves no input either (frozen embeddings): net ~0.
    final_norm = tokens * ((3 * sh.hidden + 1) if full else 1) * ab
    logits_bytes = 12 + (ab if ab == 2 else 0)
    if s.chunked:
        rows = max(1, CHUNK_ELEMENTS // sh.vocab)
        chunk = min(rows, tokens)
        logits = Term(
            "logits (chunked loss: one chunk)",
            chunk * sh.vocab * logits_bytes + tokens * sh.hidden * ab,
            f"{chunk:,} rows x vocab {sh.vocab:,} x {logits_bytes} B (logits, log-softmax,"
            f" gradient) + {tokens:,} hidden rows",
            phases=("compute",),
        )
    else:
        logits = Term(
            "logits",
            tokens * sh.vocab * logits_bytes,
            f"{_rows(s)} x {_seq(s)} x vocab {sh.vocab:,} x {logits_bytes} B (fp32 "
            "log-softmax kept + its gradient + the logits gradient"
            + (", plus 16-bit logits" if ab == 2 else "")
            + ")",
            phases=("compute",),
        )
    out: list[Term] = []
    if s.checkpointing:
        # The layer recomputed in backward comes after the logits are freed: it adds only
        # what it holds beyond them.
        boundary = tokens * sh.hidden * ab
        out.append(
            Term(
                "activations (checkpointed)",
                sh.layers * boundary + max(0, layer_bytes - logits.bytes) + final_norm,
                f"{sh.layers} layers x {tokens:,} tokens x h={sh.hidden} x {ab} B (layer inputs)"
                f" + max(0, 1 layer recomputed - logits): {tokens:,} x ({per_layer:,.0f} x {ab} B"
                + (f" + {norm_extra:,} B" if norm_extra else "")
                + f") [{formula}] + final norm",
                phases=("compute",),
            )
        )
    else:
        out.append(
            Term(
                "activations",
                sh.layers * layer_bytes + final_norm,
                f"{sh.layers} layers x {tokens:,} tokens x ({per_layer:,.0f} x {ab} B"
                + (f" + {norm_extra:,} B" if norm_extra else "")
                + f") [{formula}] + final norm",
                phases=("compute",),
            )
        )
    out.append(logits)
    return out


def _seq(s: Setup) -> int:
    """Positions per sequence on one rank (all of them without sequence parallelism)."""
    return int(getattr(s, "local_seq", s.seq))


def _rows(s: Setup) -> str:
    return f"{s.micro_batch} x {s.sequences}" if s.sequences > 1 else str(s.micro_batch)
