"""GGUF files as input: which path and file transformers is given, and early refusals.

Training from a GGUF (first-step loss equal to the safetensors weights) is in
plugins/gguf/tests, which can write one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tune.builtin.gguf_input import gguf_location
from tune.errors import TuneError

gguf = pytest.importorskip("gguf")


def _file(path, arch: str):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def _model(path, gguf_file=None):
    return SimpleNamespace(path=str(path), gguf_file=gguf_file)


def test_plain_paths_pass_through():
    assert gguf_location(_model("meta-llama/Llama-3.2-1B")) == ("meta-llama/Llama-3.2-1B", {})
    hub = gguf_location(_model("org/repo-GGUF", "model-q8_0.gguf"))
    assert hub == ("org/repo-GGUF", {"gguf_file": "model-q8_0.gguf"})


def test_a_gguf_path_is_found_beside_the_recipe_then_split(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    _file(tmp_path / "models" / "m.gguf", "llama")
    recipe = tmp_path / "recipe.toml"
    monkeypatch.chdir("/")
    path, extra = gguf_location(_model("models/m.gguf"), recipe)
    assert (path, extra) == (str((tmp_path / "models").resolve()), {"gguf_file": "m.gguf"})
    folder = gguf_location(_model(tmp_path / "models", "m.gguf"), recipe)
    assert folder == (str(tmp_path / "models"), {"gguf_file": "m.gguf"})


def test_missing_file_and_unsupported_architecture_are_refused(tmp_path):
    with pytest.raises(TuneError, match="GGUF file not found"):
        gguf_location(_model(tmp_path / "nope.gguf"))
    _file(tmp_path / "odd.gguf", "made-up-arch")
    with pytest.raises(TuneError, match="architecture 'made-up-arch'.*llama.*qwen2"):
        gguf_location(_model(tmp_path / "odd.gguf"))
