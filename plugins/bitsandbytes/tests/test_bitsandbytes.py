"""bitsandbytes plugin on CPU, for real: 4-bit/8-bit QLoRA training, 8-bit optimizer state size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tune_plugin_bitsandbytes
from tune.plugin import hookimpl
from tune.testing import (
    build_model,
    check_missing_library,
    load_recipe,
    recipe_dict,
    run_cli,
    tiny_model,
    write_recipe,
)

REPO = Path(__file__).resolve().parents[3]


def qlora(tmp_path, quantize="nf4", optimizer="adamw_8bit", **train):
    return recipe_dict(
        tmp_path,
        model={"quantize": quantize, "quantization": {"compute_dtype": "float32"}},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"name": optimizer, "lr": 1e-2},
        train={"max_steps": 6, **train},
    )


@pytest.mark.parametrize("quantize", ["nf4", "fp4", "int8"])
def test_qlora_trains_on_a_quantized_base(tmp_path, run_recipe, quantize):
    summary, _ = run_recipe(qlora(tmp_path, quantize, gradient_checkpointing=True))
    assert summary["last_loss"] < summary["first_loss"]
    config = json.loads((tmp_path / "run/final/adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


class Inspect:
    """Adapter `inspect`: keeps the model the adapt chain receives (loaded, quantized and
    prepared for k-bit training), as it was then: its 4-bit layers and which parameters train."""

    @hookimpl
    def tune_provide(self, provide):
        provide.adapter("inspect", doc="records the model it is handed")

    @hookimpl
    def tune_adapt_model(self, name, settings, model, ctx):
        import bitsandbytes as bnb

        self.layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        return model


def test_quantized_layers_are_really_4bit(tmp_path, tune_plugin):
    inspect = Inspect()
    tune_plugin(inspect, "inspect")
    data = qlora(tmp_path)
    data["adapt"].insert(0, {"method": "inspect"})  # before LoRA
    build_model(load_recipe(write_recipe(tmp_path, data)), tmp_path)
    layers = inspect.layers
    assert len(layers) == 4 * 7  # q k v o gate up down in each of 4 layers
    assert layers[0].weight.quant_state.quant_type == "nf4"
    assert not any(inspect.requires_grad)  # frozen until LoRA


# In a fresh process: validating recipes (one quantized) and building the quantization's config
# import no bitsandbytes (its import alone prints a kernel-loading warning on CPU machines).
NO_BNB_IMPORT = """
import sys
from pathlib import Path
from tune.testing import load_recipe, recipe_dict, write_recipe
import tune_plugin_bitsandbytes as plugin

tmp = Path(sys.argv[1])
plain = write_recipe(tmp, recipe_dict(tmp, 8), "plain.toml")
quantized = recipe_dict(tmp, 8, model={"quantize": "nf4"}, adapt=[{"method": "lora"}])
quantized = load_recipe(write_recipe(tmp, quantized, "nf4.toml"))
load_recipe(plain)
selected = quantized.selected("quantization")
assert isinstance(selected.backend.build(selected.settings, None), plugin.NF4)
config = plugin.NF4(selected.settings, None).config()
assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
print("bitsandbytes" in sys.modules, "peft" in sys.modules)
"""


def test_plugin_imports_bitsandbytes_only_when_a_recipe_uses_it(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", NO_BNB_IMPORT, str(tmp_path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["False", "False"], res.stdout + res.stderr[-2000:]


def test_without_bitsandbytes_its_recipes_are_refused_and_others_validate(tmp_path):
    check_missing_library(tmp_path, "bitsandbytes", "bitsandbytes", qlora(tmp_path))


def test_numel_counts_the_values_a_packed_4bit_weight_holds():
    plain = torch.nn.Parameter(torch.zeros(8, 4))
    packed = torch.zeros(16, 1, dtype=torch.uint8)  # 32 4-bit values, 2 per byte
    packed.quant_state = object()  # what bitsandbytes' Params4bit carries
    quantization = tune_plugin_bitsandbytes.NF4(tune_plugin_bitsandbytes.QuantSettings(), None)
    assert quantization.numel(plain) == 32 and quantization.numel(packed) == 32


@pytest.mark.parametrize("name", ["paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit"])
def test_other_bnb_optimizers_train(tmp_path, run_recipe, name):
    data = recipe_dict(tmp_path, optimizer={"name": name, "lr": 1e-3}, train={"max_steps": 3})
    summary, _ = run_recipe(data)
    assert summary["last_loss"] < summary["first_loss"]


def _state_bytes(optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.numel() > 1
    )


def test_adamw_8bit_state_is_under_30_percent_of_adamw(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    path = tiny_model()
    sizes = {}
    for name, make in {
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "adamw_8bit": lambda p: bnb.optim.AdamW8bit(p, lr=1e-3),
    }.items():
        model = AutoModelForCausalLM.from_pretrained(str(path))
        optimizer = make(model.parameters())
        model(
            input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])
        ).loss.backward()
        optimizer.step()
        sizes[name] = _state_bytes(optimizer)
    ratio = sizes["adamw_8bit"] / sizes["adamw"]
    print(
        f"optimizer state bytes: adamw {sizes['adamw']:,}, adamw_8bit {sizes['adamw_8bit']:,}, ratio {ratio:.3f}"
    )
    assert ratio <= 0.30


@pytest.mark.slow
def test_quickstart_qlora_recipe_runs(tmp_path):
    out = tmp_path / "qs"
    res = run_cli(
        "run", str(REPO / "recipes" / "quickstart-qlora.toml"),
        "-o", f"train.output_dir={json.dumps(str(out))}",
        "-o", "train.max_steps=30", "-o", "train.eval_every=0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert (out / "final/adapter_model.safetensors").exists()


@pytest.mark.slow
def test_merge_an_adapter_trained_on_a_4bit_base(tmp_path, run_recipe):
    run_recipe(qlora(tmp_path))
    res = run_cli(
        "merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--dtype", "bf16"
    )
    assert res.returncode == 0, res.stderr
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert getattr(merged.config, "quantization_config", None) is None
    assert merged.dtype == torch.bfloat16
    assert torch.isfinite(merged(input_ids=torch.tensor([[1, 5, 6]])).logits).all()
