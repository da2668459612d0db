"""Generate synthetic passkey documents for the offline long-context recipe.

Each document hides a 5-digit key in filler text and ends by asking for it, so the only way to
predict the answer is to carry the key across windows through the beacons' memory.

    python recipes/data/make_passkey_docs.py            # the two files the tiny recipe uses
    python recipes/data/make_passkey_docs.py --out DIR --count 2000 --fillers 1 6 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import string
from pathlib import Path

HERE = Path(__file__).parent
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
INTRO = (  # the same wording the passkey metric uses, so evaluation matches training
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there. "
)
QUESTION = "What is the pass key? The pass key is"


def document(rng: random.Random, n_fillers: int, asks: int = 1) -> dict:
    """One {"text": ...} row: intro, fillers with the key sentence at a random depth, question.

    With `asks` > 1 the question is asked again after more filler: more retrieval per token.
    """
    key = f"{rng.randrange(10**5):05d}"
    before = rng.randint(0, n_fillers)
    text = (
        INTRO
        + FILLER * before
        + f"The pass key is {key}. Remember it. {key} is the pass key. "
        + FILLER * (n_fillers - before)
        + f"{QUESTION} {key}."
    )
    for _ in range(asks - 1):
        text += " " + FILLER * rng.randint(1, max(1, n_fillers)) + f"{QUESTION} {key}."
    return {"text": text}


def copy_text(rng: random.Random, longest: int = 64, lead: int = 0) -> str:
    """A random string of 8..`longest` letters and digits written twice: `abc|abc.`.

    Only copying predicts the second half. Lengths vary so the copy sits at no fixed distance:
    a fixed offset teaches copying by position, which does not carry over to a key at any depth.
    With `lead` > 0 the pair follows 0..`lead` characters of filler and each copy is cued by `=`
    (`...blue. Th=abc|=abc.`): the string starts at no fixed position either, so a model cannot
    copy by counting from the row start and must find the cue by content, as a passkey needs.
    """
    s = "".join(
        rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(8, longest))
    )
    if not lead:
        return f"{s}|{s}."
    start = rng.randrange(len(FILLER))
    noise = (FILLER * 2)[start : start + rng.randint(0, lead)]
    return f"{noise}={s}|={s}."


def write(path: Path, rng: random.Random, count: int, fillers: tuple[int, int], asks: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(count):
            fh.write(json.dumps(document(rng, rng.randint(*fillers), asks)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--count", type=int, default=300, help="training documents")
    parser.add_argument("--fillers", type=int, nargs=2, default=(6, 16), metavar=("MIN", "MAX"))
    parser.add_argument("--asks", type=int, default=1, help="questions per training document")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    write(args.out / "passkey-train.jsonl", rng, args.count, tuple(args.fillers), args.asks)
    write(args.out / "passkey-eval.jsonl", rng, 8, (14, 14), 1)


if __name__ == "__main__":
    main()
