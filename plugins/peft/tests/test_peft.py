"""PEFT plugin: every method trains, reloads with plain PEFT, merges into a plain model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tune.plugin import TuneError, hookimpl
from tune.testing import recipe_dict, run_cli, tiny_model
from tune_plugin_peft import recognize_adapter

pytest.importorskip("peft")

PROBE_IDS = [[1, 40, 50, 60, 70, 80, 90, 100, 5, 6, 7]]

PLAIN_PEFT = """
import sys, json
sys.modules["tune"] = None  # the adapter must load with tune absent
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
adapter, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
base_path = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor(ids)).logits.float(), out)
"""


class Probe:
    """Metric `probe`: records the final model's logits on PROBE_IDS, to compare with reloads."""

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    @hookimpl
    def tune_provide(self, provide):
        provide.metric("probe", doc="records the model's logits on PROBE_IDS")

    @hookimpl
    def tune_evaluate(self, names, settings, model, data, ctx):
        if "probe" not in names:
            return None
        with torch.no_grad():
            self.logits.append(model(input_ids=torch.tensor(PROBE_IDS)).logits.float().cpu())
        return {"probe": float(self.logits[-1].abs().mean())}


@pytest.fixture
def probe(tune_plugin):
    """The probe metric, registered for this test's in-process runs."""
    plugin = Probe()
    tune_plugin(plugin, "probe")
    return plugin


def lora_recipe(tmp_path, method="lora", **adapt):
    return recipe_dict(
        tmp_path,
        adapt=[{"method": method, "targets": "all-linear", **adapt}],
        optimizer={"lr": 1e-2},
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity", "probe"]},
        train={"max_steps": 8},
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "adapt"),
    [
        ("lora", {"r": 8, "alpha": 16}),
        ("lora", {"r": 8, "use_rslora": True, "dropout": 0.1}),
        ("dora", {"r": 8}),
        ("ia3", {}),
        ("loha", {"r": 4}),
        ("lokr", {"r": 4}),
    ],
)
def test_method_trains_and_reloads_with_plain_peft(tmp_path, run_recipe, probe, method, adapt):
    if method == "ia3":
        adapt = {"targets": ["q_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
    data = lora_recipe(tmp_path, method, **adapt)
    if method == "ia3":
        data["optimizer"]["lr"] = 5e-2
    summary, _ = run_recipe(data)
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["trainable_params"] < 0.5 * summary["total_params"]
    final = tmp_path / "run" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == {"dora": "LORA"}.get(method, method.upper())
    assert (final / "adapter_model.safetensors").exists()
    out = tmp_path / "plain.pt"
    subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT, str(final), json.dumps(PROBE_IDS), str(out)],
        check=True,
        capture_output=True,
    )
    plain = torch.load(out)
    trained = probe.logits[-1]
    assert torch.allclose(plain, trained, atol=1e-5), float((plain - trained).abs().max())


@pytest.mark.slow
def test_merge_gives_the_adapter_models_logits_and_chat_replies_as_trained(
    tmp_path, run_recipe, probe
):
    data = lora_recipe(tmp_path, r=8, alpha=16)
    data["generate"] = {"prompts": ["reverse hello"], "max_new_tokens": 6}
    summary, _ = run_recipe(data)
    # `tune chat` loads the run the merge way and speaks through the trained chat template
    res = run_cli(
        "chat", str(tmp_path / "run"), "--prompt", "reverse hello", "--max-new-tokens", "6"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip("\n") == summary["samples"][0]["reply"]
    merged = tmp_path / "merged"
    res = run_cli("merge", str(tmp_path / "run"), "--out", str(merged), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROBE_IDS)).logits
    assert torch.allclose(logits, probe.logits[-1], atol=1e-4)
    assert AutoTokenizer.from_pretrained(str(merged)).chat_template  # the trained template kept
    # bf16 merge: same model within bf16 tolerance
    res = run_cli("merge", str(tmp_path / "run"), "--out", str(tmp_path / "m16"))
    assert res.returncode == 0, res.stderr
    m16 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m16"))
    assert m16.dtype == torch.bfloat16
    with torch.no_grad():
        l16 = m16(input_ids=torch.tensor(PROBE_IDS)).logits.float()
    assert (l16 - logits).abs().max() < 0.1 * logits.abs().max()


def test_merge_refuses_to_overwrite_and_explains(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    res = run_cli("merge", str(tmp_path), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (tmp_path / "out" / "x").read_text() == "keep me"


def test_recognizes_a_peft_adapter_directory_and_nothing_else(tmp_path):
    assert recognize_adapter(tmp_path) is None  # no adapter_config.json: not PEFT's
    config = {"base_model_name_or_path": "org/base", "peft_type": "LORA", "use_dora": True}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert recognize_adapter(tmp_path) == {
        "model": {"path": "org/base"},
        "adapt": [{"method": "dora"}],
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA"}))
    with pytest.raises(TuneError, match="no base_model_name_or_path"):
        recognize_adapter(tmp_path)


@pytest.mark.slow
def test_merge_opens_an_adapter_that_plain_peft_wrote(tmp_path):
    """No recipe.toml: the adapters' `recognizes=` tells `tune merge` the base and method."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model()), dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor(PROBE_IDS)).logits
    model.save_pretrained(str(tmp_path / "adapter"))
    merged = tmp_path / "merged"
    res = run_cli("merge", str(tmp_path / "adapter"), "--out", str(merged), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr
    plain = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    with torch.no_grad():
        got = plain(input_ids=torch.tensor(PROBE_IDS)).logits
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
