"""Generate long synthetic passkey documents for the offline long-context recipe (seed 0).

Each document hides a 5-digit key in filler text and ends by asking for it, so the only way to
predict the answer is to carry the key across windows through the beacons' memory.
Run: python recipes/data/make_passkey_docs.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
INTRO = (  # the same wording the passkey metric uses, so evaluation matches training
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there. "
)


def document(rng: random.Random, n_fillers: int) -> dict:
    key = f"{rng.randrange(10**5):05d}"
    before = rng.randint(0, n_fillers)
    text = (
        INTRO
        + FILLER * before
        + f"The pass key is {key}. Remember it. {key} is the pass key. "
        + FILLER * (n_fillers - before)
        + f"What is the pass key? The pass key is {key}."
    )
    return {"text": text}


def main() -> None:
    rng = random.Random(0)
    for name, count, fillers in (
        ("passkey-train.jsonl", 300, (6, 16)),
        ("passkey-eval.jsonl", 8, (14, 14)),
    ):
        with (HERE / name).open("w", encoding="utf-8") as fh:
            for _ in range(count):
                fh.write(json.dumps(document(rng, rng.randint(*fillers))) + "\n")


if __name__ == "__main__":
    main()
