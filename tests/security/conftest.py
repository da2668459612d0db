"""Shared pieces of the attack tests: a finished tiny run to attack, the CLI in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tune.testing import recipe_dict, run, write_recipe


def cli(capsys, *args: str) -> tuple[int, str]:
    """`tune ARGS` in this process: (exit code, stdout + stderr)."""
    from tune.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def one_paragraph(text: str) -> bool:
    """A user mistake is told in one paragraph: an `error:` line, no traceback."""
    return "Traceback" not in text and "error:" in text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at 2 and 4; tests copy it before attacking."""
    tmp = tmp_path_factory.mktemp("finished")
    data = recipe_dict(tmp, train={"max_steps": 4, "save_every": 2, "keep_last": 5})
    run(write_recipe(tmp, data))
    return tmp


@pytest.fixture
def victim_run(finished_run, tmp_path) -> tuple[Path, Path]:
    """(a copy of the finished run's folder, its recipe with output_dir pointing at the copy)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run / "run", out, symlinks=True)
    shutil.copy(finished_run / "train.jsonl", tmp_path / "train.jsonl")
    data = recipe_dict(tmp_path, train={"max_steps": 4, "save_every": 2, "keep_last": 5})
    return out, write_recipe(tmp_path, data)
