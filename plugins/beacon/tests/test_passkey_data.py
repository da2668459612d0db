"""The synthetic long-context data: shipped files and the copy rows the passkey bench uses."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GENERATOR = REPO / "recipes" / "data" / "make_passkey_docs.py"


def _generator():
    spec = importlib.util.spec_from_file_location("make_passkey_docs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_passkey_files_are_the_generators_default_output(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True)
    for name in ("passkey-train.jsonl", "passkey-eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (GENERATOR.parent / name).read_bytes(), name


def test_copy_rows_with_a_lead_start_anywhere_and_repeat_the_cued_string():
    gen = _generator()
    rng = random.Random(0)
    starts = set()
    for _ in range(200):
        text = gen.copy_text(rng, longest=32, lead=64)
        lead, rest = text.split("=", 1)
        first, second = rest[:-1].split("|=")
        assert text.endswith(".") and first == second and 8 <= len(first) <= 32
        assert first.isalnum() and lead in gen.FILLER * 2 and len(lead) <= 64
        starts.add(len(lead))
    assert len(starts) > 30  # no fixed position to count from
    assert "=" not in gen.copy_text(random.Random(0))  # lead = 0: the plain `abc|abc.` row
