"""Packed micro-batches of vision examples: whole examples end to end in a row, no padding
between them, position ids restarting at each example.

transformers reads restarting position ids as sequence boundaries (a block-diagonal causal
mask, or varlen flash-attention), so no example sees another's tokens. Models with multi-axis
rotary positions (Qwen2-VL, Qwen2.5-VL: M-RoPE over time, height and width) get each example's
positions from the model's own `get_rope_index`, computed for that example alone, under the
plain text positions that mark the boundaries: `position_ids` is then [4, rows, width], which
these models take as (text positions, then the three rope axes). Each image's vision encoding
is already separate (the vision tower attends within one image's patches).
"""

from __future__ import annotations

from typing import Any

from tune.plugin import IGNORE

from .objective import image_inputs, per_token_keys


def rope_index_owner(model: Any) -> Any:
    """The module that computes multi-axis positions (`get_rope_index`), or None."""
    if model is None:
        return None
    for module in model.modules():
        if callable(getattr(type(module), "get_rope_index", None)):
            return module
    return None


def example_positions(owner: Any, example: dict[str, Any]) -> Any:
    """[3, n] rope positions of one example, as the model computes them for it alone."""
    import torch

    inputs = image_inputs([example])
    ids = torch.tensor([example["input_ids"]])
    kwargs: dict[str, Any] = {"image_grid_thw": inputs.get("image_grid_thw")}
    if "mm_token_type_ids" in example:
        kwargs["mm_token_type_ids"] = torch.tensor([example["mm_token_type_ids"]])
    if kwargs["image_grid_thw"] is None:
        n = ids.shape[1]
        return torch.arange(n).view(1, n).expand(3, n)
    positions, _ = owner.get_rope_index(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return positions[:, 0, :]


def collate_packed(rows: list[list[dict[str, Any]]], pad_id: int, model: Any) -> dict[str, Any]:
    import torch

    owner = rope_index_owner(model)
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE, dtype=torch.long)
    text = torch.zeros((n_rows, width), dtype=torch.long)
    rope = torch.zeros((3, n_rows, width), dtype=torch.long) if owner is not None else None
    keys = per_token_keys(rows[0][0])
    extra = {k: torch.zeros((n_rows, width), dtype=torch.long) for k in keys}
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example["input_ids"])
            ids[r, at : at + n] = torch.tensor(example["input_ids"])
            labels[r, at + 1 : at + n] = torch.tensor(example["labels"][1:])
            text[r, at : at + n] = torch.arange(n)
            for key in keys:
                extra[key][r, at : at + n] = torch.tensor(example[key])
            if rope is not None:
                rope[:, r, at : at + n] = example_positions(owner, example)
            at += n
        text[r, at:] = torch.arange(width - at)  # the filler is a sequence of its own
        if rope is not None:
            rope[:, r, at:] = torch.arange(width - at)
    positions = text if rope is None else torch.cat([text[None], rope], dim=0)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions, **extra}
    batch.update(image_inputs([e for row in rows for e in row]))
    return batch
