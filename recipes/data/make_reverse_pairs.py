"""Generate quickstart-dpo's preference pairs from the quickstart's reverse-word chats.

Each pair asks to reverse a word; the chosen reply is the reversal, the rejected one echoes the
word back unchanged (the mistake an untrained model makes most). Deterministic: the pairs
follow the order of reverse-words.jsonl / reverse-words-eval.jsonl.
Run: python recipes/data/make_reverse_pairs.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def pairs(source: Path, limit: int) -> list[dict]:
    """TRL-layout pairs (prompt/chosen/rejected as message lists) from chat rows."""
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines()[:limit]:
        user, assistant = json.loads(line)["messages"]
        word = user["content"].split()[-1]
        rows.append(
            {
                "prompt": [user],
                "chosen": [assistant],
                "rejected": [{"role": "assistant", "content": word}],
            }
        )
    return rows


def main() -> None:
    for source, target, limit in (
        ("reverse-words.jsonl", "reverse-pairs.jsonl", 2000),
        ("reverse-words-eval.jsonl", "reverse-pairs-eval.jsonl", 64),
    ):
        rows = pairs(HERE / source, limit)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (HERE / target).write_text(text, encoding="utf-8")
        print(f"{target}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
