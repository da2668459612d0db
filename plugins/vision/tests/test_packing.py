"""Packed micro-batches train exactly what padded ones do: per-example loss equal within 1e-5
on the Qwen2-VL family (Qwen2-VL, Qwen2.5-VL) (its 3-D rope positions computed per example), and no example's tokens
attend to another's (changing one example leaves the others' losses unchanged)."""

from __future__ import annotations

import json

import pytest
import torch
from tune.plugin import IGNORE
from tune.testing import build_model, load_recipe, tokenize, write_recipe


def _rows(folder):
    """Rows with images of different sizes, a two-image row and a multi-turn row."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(56, 56), (84, 56), (28, 112), (112, 84), (56, 28)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)).save(folder / f"{i}.png")
    turn = [
        {"role": "user", "content": "<image>What is it?"},
        {"role": "assistant", "content": "a box"},
    ]
    return [
        {"messages": turn, "images": ["0.png"]},
        {
            "messages": [
                {"role": "user", "content": "<image> vs <image>?"},
                {"role": "assistant", "content": "left"},
            ],
            "images": ["1.png", "2.png"],
        },
        {
            "messages": turn
            + [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "teal"}],
            "images": ["3.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "no image here"},
                {"role": "assistant", "content": "ok"},
            ]
        },
        {"messages": turn, "images": ["4.png"]},
    ]


def _per_example(logits, labels, spans):
    out = []
    for r, at, n in spans:
        lg = logits[r, at : at + n - 1].float()
        tg = labels[r, at + 1 : at + n]
        out.append(
            float(torch.nn.functional.cross_entropy(lg, tg, ignore_index=IGNORE, reduction="sum"))
        )
    return out


@pytest.mark.parametrize("model", ["tune:tiny-qwen2-vl", "tune:tiny-qwen2.5-vl"])
def test_packed_equals_padded_per_example(tmp_path, vision_recipe_of, model):
    from tune_plugin_vision.objective import collate_padded
    from tune_plugin_vision.packing import collate_packed

    rows = _rows(tmp_path / "mixed")
    train = tmp_path / "mixed" / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = vision_recipe_of(n_train=4, n_eval=0, data={"train": str(train)}, adapt=[])
    recipe["model"].update(freeze=[], path=model)
    recipe = load_recipe(write_recipe(tmp_path, recipe))
    examples = tokenize(recipe).train
    assert len(examples) == 5
    model, _ = build_model(recipe)
    model.eval()
    lengths = [len(e["input_ids"]) for e in examples]
    with torch.no_grad():
        padded = collate_padded(examples, 0)
        labels = padded.pop("labels")
        logits = model(**padded, use_cache=False).logits
        want = _per_example(logits, labels, [(r, 0, n) for r, n in enumerate(lengths)])

        # two packed rows: [0, 1, 2] and [3, 4]
        packed = collate_packed([examples[:3], examples[3:]], 0, model)
        assert packed["position_ids"].shape[0] == 4  # text positions + three rope axes
        labels = packed.pop("labels")
        logits = model(**packed, use_cache=False).logits
        spans = [
            (0, 0, lengths[0]),
            (0, lengths[0], lengths[1]),
            (0, lengths[0] + lengths[1], lengths[2]),
        ]
        spans += [(1, 0, lengths[3]), (1, lengths[3], lengths[4])]
        got = _per_example(logits, labels, spans)
        # the check has teeth: positions running on across examples let them see each other
        joined = dict(
            packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand(1, 2, -1)
        )
        leaked = _per_example(model(**joined, use_cache=False).logits, labels, spans)
    diffs = [abs(a - b) for a, b in zip(want, got, strict=True)]
    print(f"{model}: packed vs padded per-example max diff {max(diffs):.1e}")
    assert max(diffs) < 1e-5, diffs
    assert abs(leaked[1] - want[1]) > 1e-4  # ten times the tolerance
