"""A plugin written from the guide and `tune plugins new` works: installed for real, listed, and
its own tests (tiny real runs through it) pass."""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys

import pytest
from tune.registry.scaffold import KINDS
from tune.testing import run_cli

from tests.conftest import REPO


def pip_install(folder, target):
    """A real `pip install` of the folder into `target` (no deps: tune is already here)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(folder)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip


def with_path(target):
    return {"PYTHONPATH": os.pathsep.join([str(target), *[p for p in sys.path if p]])}


def run_its_tests(tests, target):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True, text=True, cwd=tests.parent,
        env={**os.environ, **with_path(target)}, timeout=600,
    )  # fmt: skip


def test_contrib_example_is_what_the_scaffold_writes(tmp_path):
    out = run_cli(
        "plugins", "new", "example", "--kind", "metric", "--backend", "token_accuracy",
        "--dir", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    made, shipped = tmp_path / "tune-plugin-example", REPO / "contrib" / "tune-plugin-example"
    files = sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(shipped)
        for p in shipped.rglob("*")
        if p.is_file()
        and not any(part in str(p) for part in ("egg-info", "__pycache__", ".pytest_cache"))
    )
    for name in files:
        assert filecmp.cmp(made / name, shipped / name, shallow=False), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_new_plugin_installs_lists_and_passes_its_own_tests(tmp_path, kind):
    out = run_cli("plugins", "new", f"my-{kind}", "--kind", kind, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    folder, target = tmp_path / f"tune-plugin-my-{kind}", tmp_path / "site"
    pip_install(folder, target)
    listed = run_cli("plugins", "list", "--json", env=with_path(target))
    row = {r["name"]: r for r in json.loads(listed.stdout)}[f"my-{kind}"]
    assert row["distribution"] == f"tune-plugin-my-{kind}" and row["status"] == "ok"
    assert row["provides"] == [f"{kind}:my_{kind}"]
    result = run_its_tests(folder / "tests", target)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_a_name_that_is_not_an_identifier_is_refused(tmp_path):
    out = run_cli("plugins", "new", "My Metric", "--kind", "metric", "--dir", str(tmp_path))
    assert out.returncode == 2 and "lowercase" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "tune-plugin-taken").mkdir()
    (tmp_path / "tune-plugin-taken" / "keep.txt").write_text("mine")
    out = run_cli("plugins", "new", "taken", "--kind", "metric", "--dir", str(tmp_path))
    assert out.returncode == 2 and "not empty" in out.stderr
    assert (tmp_path / "tune-plugin-taken" / "keep.txt").read_text() == "mine"


def code_after(text: str, heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in the guide."""
    start = text.index(heading)
    return re.search(rf"```{lang}\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
def test_the_guides_tutorial_plugin_works_as_written(tmp_path):
    guide = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    root = tmp_path / "tune-plugin-shout"
    (root / "tune_plugin_shout").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(code_after(guide, "### 2. The entry point", "toml"))
    (root / "tune_plugin_shout" / "__init__.py").write_text(
        code_after(guide, "### 3. The module", "python")
    )
    (root / "tests" / "test_shout.py").write_text(code_after(guide, "### 6. Test it", "python"))
    pip_install(root, tmp_path / "site")
    listed = json.loads(
        run_cli("plugins", "list", "--json", env=with_path(tmp_path / "site")).stdout
    )
    assert {r["name"]: r["provides"] for r in listed}["shout"] == ["metric:shout"]
    result = run_its_tests(root / "tests", tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
