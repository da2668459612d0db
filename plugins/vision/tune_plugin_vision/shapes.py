"""A toy vision task made on the spot: small images of one coloured shape (circle, square or
triangle) on a light background; the question asks the shape's colour. Deterministic from a
seed. Used by the quickstart's shipped data and by the tests (which write their own images).

    python -m tune_plugin_vision.shapes FOLDER [--train N] [--eval N] [--seed S]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
QUESTION = "<image>What colour is the shape?"


def draw(colour: str, shape: str, rng: random.Random, size: int = 56) -> Any:
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size - 8)
    x, y = rng.randint(2, size - extent - 2), rng.randint(2, size - extent - 2)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        pen.ellipse((x, y, x + extent, y + extent), fill=fill)
    elif shape == "square":
        pen.rectangle((x, y, x + extent, y + extent), fill=fill)
    else:
        pen.polygon([(x, y + extent), (x + extent, y + extent), (x + extent // 2, y)], fill=fill)
    return image


def rows(folder: Path, n: int, seed: int, prefix: str) -> list[dict[str, Any]]:
    """`n` rows in LLaMA-Factory's layout, their PNGs written under folder/images."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = []
    names = list(COLOURS)
    for i in range(n):
        colour, shape = names[i % len(names)], rng.choice(SHAPES)
        name = f"images/{prefix}-{i:04d}.png"
        draw(colour, shape, rng).save(folder / name, optimize=True)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": QUESTION},
                    {"role": "assistant", "content": colour},
                ],
                "images": [name],
            }
        )
    rng.shuffle(out)
    return out


def write(folder: Path, n_train: int = 240, n_eval: int = 48, seed: int = 0) -> tuple[Path, Path]:
    folder = Path(folder)
    paths = []
    for split, n, s in (("train", n_train, seed), ("eval", n_eval, seed + 1)):
        path = folder / f"{split}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for row in rows(folder, n, s, split):
                fh.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--eval", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(*write(args.folder, args.train, args.eval, args.seed))
