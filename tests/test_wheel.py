"""The built wheel is the product: installed alone in a fresh environment, its commands work.

An editable install finds every module in the source tree, so a package left out of the wheel
goes unnoticed there (`tune estimate` once failed for anyone who installed the wheel). Here
the wheel is built, installed without the source tree in a new venv (its dependencies are the
test environment's, reached without tune's own editable install), and run as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from tune.testing import recipe_dict, write_recipe

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp / "dist"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=tmp,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "dist").glob("tune-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies (torch, transformers, ...) are this environment's: a path entry, whose
    # .pth files (tune's own editable install among them) are not read.
    Path(purelib, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            purelib,
            str(wheel),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    scripts = env_dir / "bin"
    (scripts / "tune").write_text(f"#!{python}\nfrom tune.cli import main\nmain()\n")
    (scripts / "tune").chmod(0o755)
    return scripts


def _tune(scripts: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TUNE_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the test environment's plugins are editable
    return subprocess.run(
        [str(scripts / "tune"), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_the_wheel_is_the_one_imported(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(installed / "python"), "-c", "import tune; print(tune.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    ).stdout
    assert str(REPO) not in out and "site-packages" in out, out


def test_plugins_list_validate_and_estimate_run_from_the_wheel(installed, tmp_path):
    listed = _tune(installed, "plugins", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {p["name"] for p in json.loads(listed.stdout)}
    assert {"transformers", "formats", "causal_lm", "single", "jsonl"} <= names
    recipe = write_recipe(tmp_path, recipe_dict(tmp_path))
    validated = _tune(installed, "validate", str(recipe), cwd=tmp_path)
    assert validated.returncode == 0 and "ok" in validated.stdout, validated.stderr
    estimated = _tune(installed, "estimate", str(recipe), "--json", cwd=tmp_path)
    assert estimated.returncode == 0, estimated.stderr
    assert json.loads(estimated.stdout)["peak_bytes"] > 0
