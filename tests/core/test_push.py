"""`tune push`: the model card passes huggingface_hub's parsing, --dry-run lists exactly what goes,
and a failed upload is one paragraph with exit code 2. No test reaches the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tune.errors import TuneError
from tune.plugin import hookimpl
from tune.recipe import dump_toml
from tune.testing import plugin_manager, run_cli, tiny_model
from tune.trained.push import push, stage

huggingface_hub = pytest.importorskip("huggingface_hub")


class SavedAdapter:
    """An adapter whose final/ holds its own weights file (as a PEFT adapter would)."""

    @hookimpl
    def tune_provide(self, provide):
        provide.adapter("saved")

    @hookimpl
    def tune_adapt_model(self, name, settings, model, ctx):
        return model


def _run(tmp_path: Path, base: str, adapt: bool) -> Path:
    """A finished run as tune leaves it: final/, recipe, summary.json, loss.png."""
    run = tmp_path / "run"
    final = run / "final"
    if adapt:
        final.mkdir(parents=True)
        (final / "adapter_model.safetensors").write_bytes(b"\0" * 64)
        (final / "adapter_config.json").write_text("{}")
    else:
        shutil.copytree(tiny_model("tiny-llama"), final)
    recipe = {
        "model": {"path": base},
        "adapt": [{"method": "saved"}] if adapt else [],
        "data": {"train": "hf://my-org/reverse-words", "eval": str(tmp_path / "eval.jsonl")},
        "train": {"output_dir": str(run)},
    }
    (final / "recipe.toml").write_text(dump_toml(recipe), encoding="utf-8")
    summary = {"last_loss": 0.4321, "eval": {"eval_loss": 0.5, "perplexity": 1.6487}}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "loss.png").write_bytes(b"\x89PNG fake")
    return run


def test_model_card_metadata_passes_huggingface_hub_parsing(tmp_path, tune_plugin):
    base = tmp_path / "base"  # a local base model whose card carries the licence
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    tune_plugin(SavedAdapter(), "saved")
    run = _run(tmp_path, str(base), adapt=True)
    stage(run, "me/tiny", plugin_manager(), tmp_path / "stage", merged=None,
          precision="bf16", online=False)  # fmt: skip
    text = (tmp_path / "stage" / "upload" / "README.md").read_text()
    card = huggingface_hub.ModelCard(text)  # huggingface_hub's own parser and checks
    data = card.data
    assert data.license == "apache-2.0"  # inherited from the base
    assert data.library_name == "peft"
    assert data.datasets == ["my-org/reverse-words"]  # hub ids only, local files in the body
    assert {"tune", "saved"} <= set(data.tags)
    assert data.base_model is None  # a local folder is not a Hub id
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results == {"eval_loss": 0.5, "perplexity": 1.6487}
    again = huggingface_hub.ModelCardData(**data.to_dict())  # round-trips through the model
    assert again.to_dict() == data.to_dict()
    assert "![training loss](loss.png)" in text and "| train_loss | 0.4321 |" in text
    assert "[[adapt]]" in text and 'method = "saved"' in text  # the recipe


def test_hub_base_model_is_named_in_the_metadata(tmp_path, tune_plugin):
    tune_plugin(SavedAdapter(), "saved")
    run = _run(tmp_path, "meta-llama/Llama-3.2-1B", adapt=True)
    stage(run, "me/x", plugin_manager(), tmp_path / "s", merged=None,
          precision="bf16", online=False)  # fmt: skip
    card = huggingface_hub.ModelCard((tmp_path / "s" / "upload" / "README.md").read_text())
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"


def test_dry_run_lists_exactly_the_staged_files(tmp_path, tune_plugin):
    tune_plugin(SavedAdapter(), "saved")
    run = _run(tmp_path, "tune:tiny-llama", adapt=True)
    result = push(run, "me/tiny", plugin_manager(), dry_run=True)
    names = [name for name, _ in result.files]
    assert names == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png", "recipe.toml"]
    )
    assert dict(result.files)["adapter_model.safetensors"] == 64
    assert result.url is None


def test_full_model_run_cannot_push_an_adapter(tmp_path):
    run = _run(tmp_path, "tune:tiny-llama", adapt=False)
    with pytest.raises(TuneError, match="no adapter to upload"):
        push(run, "me/tiny", plugin_manager(), merged=False, dry_run=True)
    with pytest.raises(TuneError, match="not a Hub repository id"):
        push(run, "not a repo id", plugin_manager(), dry_run=True)


def test_offline_upload_and_missing_token_are_one_paragraph_exit_2(tmp_path):
    run = _run(tmp_path, "tune:tiny-llama", adapt=False)
    env = {"HF_TOKEN": "hf_not_a_real_token", "HF_HUB_OFFLINE": "1"}
    result = run_cli("push", str(run), "me/tiny", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "could not upload" in result.stderr
    assert "hf_not_a_real_token" not in result.stderr + result.stdout
    no_token = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("push", str(run), "me/tiny", env=no_token)
    assert result.returncode == 2 and "no Hugging Face token" in result.stderr
