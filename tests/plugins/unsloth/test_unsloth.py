"""Unsloth plugin: honest about needing a GPU, scoped providers, and the real thing on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tune.plugins import get_plugin_manager
from tune.recipe import load_recipe
from tune.testing import REPO, chat_rows, run_cli, write_jsonl
from tune_plugin_unsloth import (
    ALL_LINEAR,
    from_pretrained_kwargs,
    get_peft_model_kwargs,
    gpu_present,
)

RECIPE = REPO / "recipes" / "llama3.2-3b-unsloth.toml"
no_gpu = pytest.mark.skipif(gpu_present(), reason="checks the no-GPU behaviour")


@no_gpu
def test_plugins_list_says_it_needs_a_gpu():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert rows["unsloth"]["status"].startswith("needs a CUDA GPU")
    assert "adapter:lora@unsloth" in rows["unsloth"]["provides"]


@no_gpu
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_unsloth_recipe_stops_before_loading_anything(verb):
    code = (
        "import sys\n"
        "from tune.cli import main\n"
        f"try:\n    main([{verb!r}, {str(RECIPE)!r}])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'unsloth') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert "needs a CUDA GPU" in out.stderr and 'loader = "transformers"' in out.stderr
    assert "Traceback" not in out.stderr


def test_lora_and_nf4_are_scoped_to_the_unsloth_loader():
    pm = get_plugin_manager()
    assert pm.backend("adapter", "lora", loader="unsloth").plugin == "unsloth"
    assert pm.backend("quantization", "nf4", loader="unsloth").plugin == "unsloth"
    assert pm.backend("adapter", "lora", loader="transformers").plugin == "peft"
    assert pm.backend("quantization", "nf4", loader="transformers").plugin == "bitsandbytes"


def test_recipe_maps_onto_unsloths_api():
    recipe = load_recipe(RECIPE)
    from tune.recipe import select_backends

    select_backends(recipe, get_plugin_manager(), roles=("loader", "quantization", "adapt"))
    loader = recipe.backends["loader"].settings
    kwargs = from_pretrained_kwargs(recipe, loader)
    assert kwargs["model_name"] == "unsloth/Llama-3.2-3B-Instruct"
    assert kwargs["load_in_4bit"] is True and kwargs["load_in_8bit"] is False
    assert kwargs["max_seq_length"] == 2048 and kwargs["use_gradient_checkpointing"] == "unsloth"
    lora = get_peft_model_kwargs(recipe, loader, recipe.backends["adapt"][0].settings)
    assert lora["r"] == 16 and lora["lora_alpha"] == 16 and lora["target_modules"] == ALL_LINEAR


def test_same_recipe_with_the_transformers_loader_runs_on_cpu(tmp_path):
    """The pointer the refusal gives works: swap the loader, keep the rest (tiny model, CPU)."""
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(16))
    overrides = {
        "model.loader": '"transformers"',
        "model.path": '"tune:tiny-llama"',
        "model.max_seq_len": "128",
        "model.quantization.compute_dtype": '"float32"',
        "data.train": json.dumps(str(data)),
        "train.max_steps": "2",
        "train.precision": '"fp32"',
        "train.output_dir": json.dumps(str(tmp_path / "run")),
        "generate.max_new_tokens": "4",
    }
    args = ["run", str(RECIPE)]
    for key, value in overrides.items():
        args += ["-o", f"{key}={value}"]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run/final/adapter_config.json").exists()


@pytest.mark.gpu
def test_unsloth_trains_the_tiny_model_on_a_gpu(tmp_path):
    from tune.builtin.tiny import materialize

    base = materialize("tiny-llama", {}, 0)
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(64))
    out = run_cli(
        "run", str(RECIPE),
        "-o", f"model.path={json.dumps(str(base))}",
        "-o", f"data.train={json.dumps(str(data))}",
        "-o", "train.max_steps=10",
        "-o", f"train.output_dir={json.dumps(str(tmp_path / 'run'))}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert (tmp_path / "run/final/adapter_config.json").exists()
