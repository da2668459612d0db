"""Mixture-of-experts models: what the adapters reach, the router loss, strategies, merge.

Tiny Qwen3-MoE / Mixtral / gpt-oss models built from their configs (fused 3-D experts, a top-k
router, the load-balancing loss on). Parity with Trainer + PEFT is in the peft plugin's tests.
"""

from __future__ import annotations

import pytest
from tune.testing import (
    SGD_PLUGIN,
    final_weights,
    launch,
    max_weight_diff,
    recipe_dict,
    train_losses,
    write_plugin,
    write_recipe,
)

MODEL = "tune:tiny-qwen3-moe"
LORA = [{"method": "lora", "r": 4, "alpha": 8, "targets": "all-linear"}]


def moe_recipe(tmp_path, out, strategy, adapt=LORA, **train):
    data = recipe_dict(
        tmp_path,
        n_rows=16,
        model={"path": MODEL, "max_seq_len": 64},
        adapt=list(adapt),
        optimizer={"name": "sgd", "lr": 0.2, "momentum": 0.9},
        strategy=strategy,
        data={"shuffle": False},
        train={"output_dir": str(tmp_path / out), "max_steps": 3, "max_grad_norm": 1.0, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


@pytest.mark.slow
def test_two_process_fsdp2_and_zero3_equal_one_process(tmp_path):
    """One example per micro-batch everywhere (4 x 1 in one process, 2 x 1 on each of 2 ranks):
    the router loss is a function of the micro-batch, so equal micro-batches must give equal
    steps whichever rank computes them; LoRA on the fused experts under both shardings."""
    env = write_plugin(tmp_path, "sgd_plugin", SGD_PLUGIN)
    runs = {
        "single": ({"name": "single"}, 1, 4),
        "fsdp": ({"name": "fsdp"}, 2, 2),
        "zero3": ({"name": "deepspeed", "zero_stage": 3}, 2, 2),
    }
    for out, (strategy, nproc, accum) in runs.items():
        path = moe_recipe(tmp_path, out, strategy, micro_batch_size=1, grad_accum=accum)
        res = launch(path, nproc, "-p", "sgd_plugin", env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    one = train_losses(tmp_path / "single")
    assert one[-1] < one[0]
    for out in ("fsdp", "zero3"):
        two = train_losses(tmp_path / out)
        loss = max(abs(a - b) for a, b in zip(one, two, strict=True))
        diff = max_weight_diff(final_weights(tmp_path / "single"), final_weights(tmp_path / out))
        print(f"{out}: max per-step loss diff {loss:.1e}, max final weight diff {diff:.1e}")
        assert loss <= 1e-5 and diff <= 1e-5, (out, one, two)
    assert any("experts" in k for k in final_weights(tmp_path / "zero3"))


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    """A 3-step LoRA run on the tiny Qwen3-MoE (experts adapted), in this process."""
    from tune.testing import run

    tmp = tmp_path_factory.mktemp("moe")
    data = recipe_dict(
        tmp,
        n_rows=16,
        model={"path": MODEL, "max_seq_len": 64},
        adapt=[{"method": "lora", "r": 4, "alpha": 8, "targets": "all-linear"}],
        train={"max_steps": 3},
    )
    run(write_recipe(tmp, data))
    return tmp / "run"


@pytest.mark.parametrize(
    ("model", "adapt", "warned"),
    [
        (MODEL, {"targets": "all-linear", "experts": False}, True),
        (MODEL, {"targets": ["q_proj", "v_proj"]}, True),
        (MODEL, {"targets": ["q_proj", "v_proj"], "experts": True}, False),
        ("tune:tiny-llama", {"targets": "all-linear"}, False),
    ],
)
def test_a_warning_names_experts_left_unadapted(tmp_path, model, adapt, warned):
    from tune.testing import build_model, load_recipe

    data = recipe_dict(
        tmp_path, model={"path": model, "max_seq_len": 64}, adapt=[{"method": "lora", **adapt}]
    )
    recipe = load_recipe(write_recipe(tmp_path, data))
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        peft_model, _ = build_model(recipe, tmp_path)
    text = " ".join(out.getvalue().split())
    assert ("experts are not adapted" in text) == warned, text
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert not any(".mlp.gate." in n for n in names)  # the router stays as trained
    if model == MODEL:
        assert any(".experts." in n for n in names) == (not warned)
        assert "trainable by part" in text


def test_lora_dropout_on_experts_is_refused_with_the_key(tmp_path):
    from tune.errors import TuneError
    from tune.testing import build_model, load_recipe

    adapt = [{"method": "lora", "targets": "all-linear", "dropout": 0.1}]
    data = recipe_dict(tmp_path, model={"path": MODEL, "max_seq_len": 64}, adapt=adapt)
    with pytest.raises(TuneError, match=r"dropout") as info:
        build_model(load_recipe(write_recipe(tmp_path, data)), tmp_path)
    assert "experts = false" in str(info.value)


def test_merge_folds_expert_adapters_into_the_fused_weights(moe_run, tmp_path):
    """`tune merge`: the merged model computes what base + adapter computed, and its expert
    weights moved away from the base's (the adapter reached them)."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from tune.testing import run_cli, tiny_model

    merged = tmp_path / "merged"
    res = run_cli("merge", str(moe_run), "--out", str(merged), "--dtype", "fp32")
    assert res.returncode == 0, res.stderr[-2000:]
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])
    base_dir = json.loads((moe_run / "final/adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), moe_run / "final"
        )
        want = adapted(input_ids=ids).logits
        model = AutoModelForCausalLM.from_pretrained(merged)
        got = model(input_ids=ids).logits
    assert float((want - got).abs().max()) <= 1e-4
    base = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-qwen3-moe"))
    name = "model.layers.0.mlp.experts.gate_up_proj"
    moved = (model.get_parameter(name) - base.get_parameter(name)).detach()
    assert float(moved.abs().max()) > 0


@pytest.mark.parametrize("family", ["tiny-qwen3-moe", "tiny-mixtral", "tiny-gpt-oss"])
def test_estimate_counts_experts_router_and_expert_adapters_exactly(tmp_path, family):
    """`tune estimate`'s counts from the config alone equal the built model's: total and
    active parameters, and LoRA on attention + fused experts as PEFT creates it."""
    from tune.estimate import estimate
    from tune.testing import build_model, load_recipe

    adapt = [{"method": "lora", "r": 8, "targets": "all-linear"}]
    data = recipe_dict(tmp_path, model={"path": f"tune:{family}", "max_seq_len": 64}, adapt=adapt)
    recipe = load_recipe(write_recipe(tmp_path, data))
    result = estimate(recipe)
    shape = result.setup.shapes
    model, _ = build_model(recipe, tmp_path)
    trainable, total = model.get_nb_trainable_parameters()
    assert shape.total_params() == total - trainable
    assert sum(a.params for a in result.setup.adapters) == trainable
    k, e = shape.experts_per_token, shape.experts
    idle = shape.layers * shape.layer_expert_params() * (e - k) // e
    assert shape.active_params() == shape.total_params() - idle < shape.total_params()
    names = {t.name for t in result.terms}
    assert {
        "router logits (load-balancing loss)",
        "merged expert weights (LoRA on fused experts)",
    } <= names


def test_validate_says_what_each_adapter_reaches_and_warns_on_unadapted_experts(tmp_path):
    from tune.testing import run_cli

    for targets, warned in (("all-linear", False), (["q_proj", "v_proj"], True)):
        adapt = [{"method": "lora", "r": 8, "targets": targets}]
        data = recipe_dict(tmp_path, model={"path": MODEL, "max_seq_len": 64}, adapt=adapt)
        res = run_cli("validate", str(write_recipe(tmp_path, data)))
        assert res.returncode == 0, res.stderr
        out = " ".join(res.stdout.split())
        assert ("experts x 4 layers" in out) != warned, out
        assert ("experts per layer are not adapted" in out) == warned, out


def test_qlora_quantizes_the_linears_and_adapts_the_fused_experts_as_they_are(tmp_path):
    """nf4 through bitsandbytes packs the attention linears; the fused 3-D experts are not
    nn.Linear and stay float32, and LoRA still reaches them."""
    pytest.importorskip("bitsandbytes")
    from tune.testing import build_model, load_recipe

    data = recipe_dict(
        tmp_path,
        model={
            "path": MODEL,
            "max_seq_len": 64,
            "quantize": "nf4",
            "quantization": {"compute_dtype": "float32"},
        },
        adapt=LORA,
    )
    model, _ = build_model(load_recipe(write_recipe(tmp_path, data)), tmp_path)
    params = dict(model.named_parameters())
    q_proj = next(p for n, p in params.items() if n.endswith("self_attn.q_proj.base_layer.weight"))
    assert type(q_proj).__name__ == "Params4bit"
    experts = [p for n, p in params.items() if n.endswith(".gate_up_proj") and "experts" in n]
    assert experts and all(p.dtype.is_floating_point and p.ndim == 3 for p in experts)
    assert any("experts.lora_A" in n and p.requires_grad for n, p in params.items())
