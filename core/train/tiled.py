"""Tiled MLP: each decoder layer's MLP runs over tiles of tokens, recomputed in backward. Exact.

At long lengths the MLP's [tokens, intermediate] tensors (gate, up, their product: ~2.7x the
hidden size each) are the largest activations of a layer. Here the MLP's input is flattened to
[tokens, hidden] and cut into ceil(tokens / `[train] tiled_mlp_tokens`) tiles of (nearly) equal
size, none larger than the tile size. Each tile runs under non-reentrant activation
checkpointing, so autograd keeps only the tile's input (a view of the layer's input, no copy)
and recomputes the tile's intermediates in backward, one tile at a time. No [tokens,
intermediate] tensor ever exists; with the chunked loss no [tokens, vocab] one either. The MLP is position-wise, so tiling the flattened tokens is exact for padded and
packed rows alike.

Why not DeepSpeed's Arctic `TiledMLP`: its backward calls `torch.autograd.backward` once per
tile, so each weight's gradient is accumulated once per tile; DDP's reducer (and FSDP) expect one
gradient-ready event per weight per backward, and it needs DeepSpeed for a single-device run.
Checkpointing each tile keeps the ordinary graph: every weight (or LoRA weight, which stays
inside the MLP's linears) receives its summed gradient once, under any strategy, with the
model's own gradient checkpointing on (the tiles nest inside the layer's recompute) or off.

In a multi-process run every rank makes the same number of tile calls per MLP (the count follows
from the recipe's micro_batch_size x max_seq_len): ZeRO-3 gathers a linear's weights on each
call, so a count that depended on each rank's batch length could leave ranks waiting on
different collectives.
"""

from __future__ import annotations

import math
import types
from typing import Any

from tune.errors import TuneError

DEFAULT_TILE_TOKENS = 1024


def is_moe(mlp: Any) -> bool:
    """A mixture-of-experts block: routed per token over experts (left untiled)."""
    name = type(mlp).__name__.lower()
    return "moe" in name or "sparse" in name or hasattr(mlp, "experts") or hasattr(mlp, "router")


def layer_mlp(layer: Any) -> Any:
    """The per-layer MLP module transformers decoders name `mlp` (None when there is none)."""
    import torch

    mlp = getattr(layer, "mlp", None)
    return mlp if isinstance(mlp, torch.nn.Module) else None


def _tiled_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """The MLP over tiles of flattened tokens, each tile checkpointed (non-reentrant)."""
    import torch
    import torch.utils.checkpoint

    inner = self._tune_untiled_forward
    if args or kwargs or x.dim() < 2:
        return inner(x, *args, **kwargs)  # not the plain position-wise call we know how to tile
    tokens = x.shape[:-1].numel()
    tiles = self._tune_tile_count or max(1, math.ceil(tokens / self._tune_tile_tokens))
    flat = x.reshape(tokens, x.shape[-1])
    grad = torch.is_grad_enabled()
    outs = []
    for part in torch.tensor_split(flat, tiles, dim=0):
        if grad:
            outs.append(torch.utils.checkpoint.checkpoint(inner, part, use_reentrant=False))
        else:
            outs.append(inner(part))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    del outs
    return out.reshape(*x.shape[:-1], out.shape[-1])


def apply_tiled_mlp(
    layers: list[Any], tile_tokens: int, tile_count: int = 0, where: str = "recipe"
) -> tuple[int, int]:
    """Tile the MLP of every decoder layer in `layers`; returns (tiled, MoE blocks left alone).

    `tile_count` > 0 fixes the number of tiles per call (multi-process runs); 0 derives it from
    each call's tokens. A model without a per-layer `mlp` is a TuneError naming the recipe key.
    """
    if not layers:
        raise _refusal(where, "no repeated decoder layers were found in the model")
    tiled = moe = 0
    for layer in layers:
        mlp = layer_mlp(layer)
        if mlp is None:
            raise _refusal(
                where, f"its decoder layers ({type(layer).__name__}) have no `mlp` module"
            )
        if is_moe(mlp):
            moe += 1
            continue
        if "_tune_untiled_forward" not in vars(mlp):
            mlp._tune_untiled_forward = _untiled(mlp)
        mlp._tune_tile_tokens = int(tile_tokens)
        mlp._tune_tile_count = int(tile_count)
        mlp.forward = types.MethodType(_tiled_forward, mlp)
        tiled += 1
    if not tiled:
        raise _refusal(
            where, f"all {moe} MLPs are mixture-of-experts blocks, which are routed per token"
        )
    return tiled, moe


def _untiled(mlp: Any) -> Any:
    """What the MLP ran before: its own forward, except lean activations' checkpointed tail,
    which a checkpointed tile makes redundant (the tile keeps none of its intermediates)."""
    bound = vars(mlp).get("forward")
    if bound is None:
        return types.MethodType(type(mlp).forward, mlp)
    from tune.train.lean import _lean_forward

    if getattr(bound, "__func__", None) is _lean_forward:
        return types.MethodType(type(mlp).forward, mlp)
    return bound


def remove_tiled_mlp(model: Any) -> int:
    """Back to what each MLP ran before tiling; returns how many were changed."""
    count = 0
    for module in model.modules():
        untiled = vars(module).get("_tune_untiled_forward")
        if untiled is None:
            continue
        if getattr(untiled, "__func__", None) is type(module).forward:
            del module.forward
        else:
            module.forward = untiled
        del module._tune_untiled_forward
        count += 1
    return count


def tile_count(micro_batch_size: int, max_seq_len: int, tile_tokens: int) -> int:
    """Tiles per MLP call in a multi-process run: enough for the largest planned micro-batch."""
    return max(1, math.ceil(micro_batch_size * max_seq_len / tile_tokens))


def _refusal(where: str, why: str) -> TuneError:
    return TuneError(
        f"tiled_mlp = true cannot apply to this model: {why}. It tiles the position-wise MLP "
        "that each transformers decoder layer holds as `mlp` (Llama, Mistral, Qwen and the "
        "like); mixture-of-experts blocks are left untiled.",
        where=f"{where}: [train] tiled_mlp",
        fix="set [train] tiled_mlp = false for this model (gradient_checkpointing = true and "
        "the chunked loss still bound long-sequence memory).",
    )
