"""Objective `vision_lm`: the next-token loss of vision-language examples.

It collates what `vision_chat` examples hold besides tokens: per-token inputs are padded like
the tokens, pixel tensors of the micro-batch's images are concatenated in example order (the
order the model consumes its image tokens in). Packed micro-batches put whole examples end to
end with position ids restarting at each one; a model with multi-axis (M-RoPE) positions gets
them per example from the model's own rope index, so no example sees another's tokens.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import IGNORE, Capabilities, LossOutput, Objective

EXAMPLES = "vision"  # the example kind: tokens plus image tensors
META = ("mm_names", "mm_shapes", "mm_dtypes", "mm_bytes", "image_sha")


def tensors(example: dict[str, Any]) -> dict[str, Any]:
    """The example's non-token inputs as numpy arrays."""
    import numpy as np

    out = {}
    for name, shape, dtype, blob in zip(
        example.get("mm_names") or [],
        example.get("mm_shapes") or [],
        example.get("mm_dtypes") or [],
        example.get("mm_bytes") or [],
        strict=True,
    ):
        out[name] = np.frombuffer(blob, dtype=np.dtype(dtype)).reshape(shape)
    return out


def per_token_keys(example: dict[str, Any]) -> list[str]:
    n = len(example["input_ids"])
    return [
        k
        for k, v in example.items()
        if k not in ("input_ids", "labels")
        and k not in META
        and isinstance(v, list)
        and len(v) == n
    ]


def image_inputs(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pixel tensors (and grids) of the examples' images, concatenated along dim 0."""
    import numpy as np
    import torch

    parts: dict[str, list[Any]] = {}
    for example in examples:
        for name, array in tensors(example).items():
            parts.setdefault(name, []).append(array)
    out = {}
    for name, arrays in parts.items():
        out[name] = torch.from_numpy(np.concatenate(arrays, axis=0).copy())
    return out


def collate_padded(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    rows = len(examples)
    batch = {
        "input_ids": torch.full((rows, width), pad_id, dtype=torch.long),
        "labels": torch.full((rows, width), IGNORE, dtype=torch.long),
        "attention_mask": torch.zeros((rows, width), dtype=torch.long),
    }
    keys = per_token_keys(examples[0])
    for key in keys:
        batch[key] = torch.zeros((rows, width), dtype=torch.long)
    for r, example in enumerate(examples):
        n = len(example["input_ids"])
        batch["input_ids"][r, :n] = torch.tensor(example["input_ids"])
        batch["labels"][r, :n] = torch.tensor(example["labels"])
        batch["attention_mask"][r, :n] = 1
        for key in keys:
            batch[key][r, :n] = torch.tensor(example[key])
    batch.update(image_inputs(examples))
    return batch


class VisionLM(Objective):
    """The causal-LM loss on vision examples: `model(**batch)`'s summed token loss."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.model = None

    def prepare(self, model: Any, run: Any) -> None:
        self.model = model  # packed batches ask it for multi-axis positions

    def collate(self, examples, pad_id):
        return collate_padded(examples, pad_id)

    def collate_packed(self, rows, pad_id):
        from .packing import collate_packed

        return collate_packed(rows, pad_id, self.model)

    def empty_like(self, example):
        blank = dict(example)
        blank["labels"] = [IGNORE] * len(example["labels"])
        return blank

    def loss(self, model, batch):
        out = model(**batch, use_cache=False, num_items_in_batch=1)
        return LossOutput(out.loss)


CAPABILITIES = Capabilities(
    full_logits=True,
    packs=True,
    why={"full_logits": "the model's own loss: the vision model's head sees full logits"},
)
