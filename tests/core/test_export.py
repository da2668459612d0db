"""`tune export`: the core hands an exporter plugin a plain model folder, or refuses with a reason.

The exporters here are plugin objects a third party could write (`tune.plugin` only); no GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.errors import TuneError
from tune.plugin import Exporter, Settings, hookimpl
from tune.recipe import dump_toml
from tune.testing import plugin_manager, tiny_model
from tune.trained.export import export


class ListSettings(Settings):
    quant: str = "plain"
    note: str = ""


class Listing(Exporter):
    """Writes the names of the files it was handed, and what it knew of the run."""

    def write(self, model_dir, files):
        listed = sorted(p.name for p in Path(model_dir).iterdir())
        files[0].write_text(
            json.dumps(
                {
                    "files": listed,
                    "quant": self.settings.quant,
                    "note": self.settings.note,
                    "base": self.ctx.recipe.model.path,
                    "adapt": [s.method for s in self.ctx.recipe.adapt],
                }
            )
        )


class ListExporter:
    @hookimpl
    def tune_provide(self, provide):
        provide.exporter("listing", ListSettings, doc="a file listing", build=Listing)


class Adapters:
    """`keep` folds into the weights (merge returns the model unchanged); `grow` adds a module."""

    @hookimpl
    def tune_provide(self, provide):
        provide.adapter("keep")
        provide.adapter("grow")

    @hookimpl
    def tune_adapt_model(self, name, settings, model, ctx):
        return model

    @hookimpl
    def tune_merge_adapter(self, name, settings, model, adapter_dir, ctx):
        if name == "grow":
            import torch

            model.extra_memory = torch.nn.Linear(4, 4)
        return model


def _artifact(tmp_path: Path, adapt: list[str]) -> Path:
    """A run's final/ as an adapter method that saves nothing would leave it: recipe + tokenizer."""
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    recipe = {
        "model": {"path": "tune:tiny-llama"},
        "adapt": [{"method": m} for m in adapt],
        "data": {"train": "unused.jsonl"},
        "train": {"output_dir": str(tmp_path / "run")},
    }
    (final / "recipe.toml").write_text(dump_toml(recipe), encoding="utf-8")
    return tmp_path / "run"


def _pm(tune_plugin):
    tune_plugin(ListExporter(), "listing")
    tune_plugin(Adapters(), "adapters")
    return plugin_manager()


def test_adapters_are_merged_into_a_plain_folder_the_exporter_gets(tmp_path, tune_plugin):
    pm = _pm(tune_plugin)
    out = tmp_path / "out" / "listing.json"
    written = export(
        _artifact(tmp_path, ["keep"]), "listing", out, pm, quant="q1", options=["note='hi'"]
    )
    assert written == [out]
    got = json.loads(out.read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(got["files"])
    assert (got["quant"], got["note"], got["adapt"]) == ("q1", "hi", ["keep"])
    assert got["base"] == "tune:tiny-llama"
    # the merge is cleaned up; tune records what it exported there
    assert sorted(p.name for p in out.parent.iterdir()) == [".tune-export.json", "listing.json"]


def test_a_full_model_folder_is_handed_over_as_it_is(tmp_path, tune_plugin):
    pm = _pm(tune_plugin)
    out = tmp_path / "l.json"
    export(tiny_model("tiny-qwen2"), "listing", out, pm)
    assert "model.safetensors" in json.loads(out.read_text())["files"]


def test_an_adapter_that_adds_modules_is_refused_naming_it(tmp_path, tune_plugin):
    pm = _pm(tune_plugin)
    with pytest.raises(TuneError, match=r"method = 'grow'.*does not fold into the base") as info:
        export(_artifact(tmp_path, ["keep", "grow"]), "listing", tmp_path / "x.json", pm)
    assert "extra_memory.weight" in str(info.value)
    assert not (tmp_path / "x.json").exists()


def test_unknown_format_and_options_are_refused_before_loading(tmp_path, tune_plugin):
    pm = _pm(tune_plugin)
    source = tmp_path / "does-not-matter"
    with pytest.raises(TuneError, match="Did you mean 'listing'"):
        export(source, "listin", tmp_path / "x", pm)
    with pytest.raises(TuneError, match="unknown key 'nte'.*Did you mean 'note'"):
        export(source, "listing", tmp_path / "x", pm, options=["nte=1"])
