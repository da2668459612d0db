"""Writes prompts.jsonl for recipes/quickstart-grpo.toml: "reverse <word>" prompts with the
reversed word as `answer`, from the quickstart's word list (seeded, so the file is stable).
Run: python recipes/data/grpo-reverse/make_prompts.py"""

import json
import random
from pathlib import Path

here = Path(__file__).parent
words = []
for line in (here.parent / "reverse-words.jsonl").read_text().splitlines():
    word = json.loads(line)["messages"][0]["content"].split()[-1]
    if 3 <= len(word) <= 4 and word not in words:
        words.append(word)
random.Random(0).shuffle(words)
rows = [{"prompt": f"reverse {w}", "answer": w[::-1]} for w in words[:256]]
(here / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
print(len(rows), "prompts")
