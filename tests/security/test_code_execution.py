"""Nothing in a run folder runs code: checkpoint pickles and saved recipes are not trusted.

Each payload would create a file if it ran; each test asserts the file is not there. The
FSDP and DeepSpeed checkpoint attacks live with their plugins (plugins/fsdp, plugins/deepspeed).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from tune.testing import CodeRunningPickle, rewrite_manifest

from tests.security.conftest import cli, one_paragraph


def test_a_checkpoint_pickle_that_would_run_code_is_refused(victim_run, tmp_path, capsys):
    out, recipe = victim_run
    marker = tmp_path / "PWNED"
    step = out / "checkpoints" / "step-4"
    (step / "scheduler.pt").write_bytes(pickle.dumps({"state": CodeRunningPickle(marker)}))
    rewrite_manifest(step)  # the manifest agrees: only the pickle check can catch it
    code, text = cli(capsys, "run", str(recipe), "--resume", "-o", "train.max_steps=5",
                     "--resume-changed")  # fmt: skip
    assert code == 2 and one_paragraph(text), text
    assert "scheduler.pt" in text and "could run code" in text
    assert not marker.exists()


def test_a_torch_archive_with_a_code_global_is_refused(victim_run, tmp_path, capsys):
    import torch

    out, recipe = victim_run
    marker = tmp_path / "PWNED"
    step = out / "checkpoints" / "step-4"
    torch.save({"payload": CodeRunningPickle(marker)}, step / "rng-rank0.pt")
    rewrite_manifest(step)
    code, text = cli(capsys, "run", str(recipe), "--resume", "-o", "train.max_steps=5",
                     "--resume-changed")  # fmt: skip
    assert code == 2 and "rng-rank0.pt" in text, text
    assert not marker.exists()


def test_a_checkpoint_without_a_manifest_is_not_trusted_silently(victim_run, capsys):
    out, recipe = victim_run
    for step in (out / "checkpoints").iterdir():
        (step / "manifest.json").unlink()
    code, text = cli(capsys, "run", str(recipe), "--resume", "-o", "train.max_steps=5",
                     "--resume-changed")  # fmt: skip
    assert code == 0, text
    assert "no manifest.json, so its files cannot be verified" in text


def _remote_code_run(out: Path, marker: Path) -> None:
    """A run folder whose saved recipe asks for remote code and whose model carries some."""
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (final / "config.json").write_text(json.dumps(config))
    (final / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    for recipe in (out / "recipe.toml", final / "recipe.toml"):
        text = recipe.read_text().replace("[model]\n", "[model]\ntrust_remote_code = true\n", 1)
        recipe.write_text(text)


def test_chat_and_eval_never_take_trust_remote_code_from_the_run(victim_run, tmp_path, capsys):
    out, _ = victim_run
    marker = tmp_path / "PWNED"
    _remote_code_run(out, marker)
    cli(capsys, "chat", str(out), "--prompt", "hi", "--max-new-tokens", "2")
    assert not marker.exists()
    cli(capsys, "eval", str(out), "--metric", "perplexity")
    assert not marker.exists()
    cli(capsys, "merge", str(out), "--out", str(tmp_path / "merged"))
    assert not marker.exists()
