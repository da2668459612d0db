"""The loop for real on tiny models: quickstart, every hook, resume, accumulation, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tune.errors import TuneError
from tune.testing import final_weights, max_weight_diff, recipe_dict, run, run_cli

from tests.conftest import REPO
from tests.core import hook_plugin

HOOKS = ["tests.core.hook_plugin"]

PLAIN_LOAD = """
import sys, json
sys.modules["tune"] = None  # prove the artifact needs no tune: importing it would fail
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
enc = tok(text, add_special_tokens=False, return_tensors="pt")
out = model.generate(**enc, max_new_tokens=n, do_sample=False)
print(json.dumps(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
"""


def test_quickstart_trains_and_final_loads_with_plain_transformers(tmp_path):
    out_dir = tmp_path / "qs"
    res = run_cli(
        "run",
        "recipes/quickstart.toml",
        "-o", f"train.output_dir={json.dumps(str(out_dir))}",
        "-o", "train.max_steps=120",
        "-o", "train.eval_every=0",
        "-o", "train.save_every=0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["steps"] == 120
    assert summary["last_loss"] < 0.5 * summary["first_loss"]
    assert summary["eval"]["eval_loss"] < 2.0
    for name in (
        "metrics.jsonl",
        "loss.png",
        "recipe.toml",
        "final/config.json",
        "final/model.safetensors",
    ):
        assert (out_dir / name).exists(), name
    sample = summary["samples"][0]
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(out_dir / "final"), sample["prompt"], "12"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(plain.stdout) == sample["reply"]


def test_every_hook_is_called_in_order(tmp_path, run_recipe):
    hook_plugin.CALLS.clear()
    data = recipe_dict(
        tmp_path,
        model={"loader": "recording_loader", "quantize": "fakequant", "quantization": {"bits": 3}},
        adapt=[{"method": "freeze_except", "tag": "a"}, {"method": "freeze_except", "tag": "b"}],
        optimizer={"name": "sgd", "lr": 0.05},
        strategy={"name": "recording"},
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity", "weight_norm"]},
    )
    summary, recipe = run_recipe(data, plugins=HOOKS)
    assert hook_plugin.CALLS == [
        ("strategy", "recording"),
        ("quantization", 3),
        ("load", {"fake": 3}),
        ("prepare", "fakequant"),
        ("adapt", "a"),
        ("adapt", "b"),
        ("optimizer", 1),  # embeddings and the tied lm_head: one decay group
    ]
    assert set(summary["eval"]) == {"eval_loss", "perplexity", "weight_norm"}
    assert summary["trainable_params"] < summary["total_params"]


def test_a_metric_key_returned_twice_is_an_error(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path, data={"eval_fraction": 0.25}, eval={"metrics": ["perplexity", "also_loss"]}
    )
    with pytest.raises(RuntimeError, match="eval_loss.*both"):
        run_recipe(data, plugins=HOOKS)


def _grads(tmp_path, run_recipe, micro, accum):
    hook_plugin.GRADS.clear()
    data = recipe_dict(
        tmp_path,
        strategy={"name": "recording"},
        data={"shuffle": False},
        train={
            "micro_batch_size": micro,
            "grad_accum": accum,
            "max_steps": 1,
            "max_grad_norm": 0.0,
        },
    )
    run_recipe(data, plugins=HOOKS, overwrite=True)
    return hook_plugin.GRADS[0]


def test_grad_accumulation_matches_one_big_batch(tmp_path, run_recipe):
    big = _grads(tmp_path, run_recipe, micro=4, accum=1)
    small = _grads(tmp_path, run_recipe, micro=1, accum=4)
    assert big.keys() == small.keys() and big
    worst = max(float((big[k] - small[k]).abs().max()) for k in big)
    scale = max(float(big[k].abs().max()) for k in big)
    assert worst <= 1e-5 * max(scale, 1.0), worst


def test_resume_continues_exactly(tmp_path, run_recipe):
    common = {
        "model": {
            "path": "tune:tiny-llama",
            "max_seq_len": 64,
            "config_overrides": {"attention_dropout": 0.1},
        },
        "scheduler": {"name": "cosine", "warmup_steps": 2},
        "train": {
            "max_steps": 12,
            "micro_batch_size": 4,
            "grad_accum": 2,
            "save_every": 6,
            "keep_last": 5,
        },
    }
    straight = recipe_dict(tmp_path, **common)
    straight["train"]["output_dir"] = str(tmp_path / "straight")
    run_recipe(straight, name="a.toml")
    resumed = recipe_dict(tmp_path, **common)
    resumed["train"]["output_dir"] = str(tmp_path / "resumed")
    from tune.testing import write_recipe

    path = write_recipe(tmp_path, resumed, "b.toml")
    run(path, resume_from=tmp_path / "straight/checkpoints/step-6")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert max_weight_diff(a, b) <= 1e-6
    la = [json.loads(x) for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    tail_a = [r["loss"] for r in la if r["kind"] == "train" and r["step"] > 6]
    tail_b = [r["loss"] for r in lb if r["kind"] == "train"]
    assert tail_a == pytest.approx(tail_b, abs=1e-6)


def test_checkpoints_are_whole_and_pruned(tmp_path, run_recipe):
    data = recipe_dict(tmp_path, train={"max_steps": 5, "save_every": 1, "keep_last": 2})
    run_recipe(data)
    out = tmp_path / "run"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-4", "step-5"]
    for name in (
        "state.json",
        "recipe.toml",
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng-rank0.pt",
    ):
        assert (out / "checkpoints/step-5" / name).exists(), name
    state = json.loads((out / "checkpoints/step-5/state.json").read_text())
    assert state["step"] == 5
    # A second run into the same directory must not clobber it by accident.
    with pytest.raises(TuneError, match="--resume"):
        run_recipe(data)
    # Resuming a finished run adds nothing and keeps the weights.
    before = load_file(str(out / "final/model.safetensors"))
    summary, _ = run_recipe(data, resume=True)
    after = load_file(str(out / "final/model.safetensors"))
    assert summary["steps"] == 5 and all(torch.equal(before[k], after[k]) for k in before)


def test_early_stopping(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        optimizer={"name": "sgd", "lr": 1e-12},
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity"]},
        train={
            "max_steps": 20,
            "eval_every": 1,
            "early_stopping_patience": 2,
            "early_stopping_threshold": 0.1,
        },
    )
    summary, _ = run_recipe(data, plugins=HOOKS)
    assert summary["stopped_early"] and summary["steps"] == 3


@pytest.mark.parametrize(
    ("arch", "template"), [("tiny-qwen2", "chatml"), ("tiny-mistral", "mistral")]
)
def test_other_architectures_train(tmp_path, run_recipe, arch, template):
    data = recipe_dict(
        tmp_path,
        model={"path": f"tune:{arch}"},
        data={"template": template},
        optimizer={"lr": 3e-3},
    )
    data["train"]["max_steps"] = 6
    summary, _ = run_recipe(data)
    assert summary["last_loss"] < summary["first_loss"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run/final"))
    assert model.config.model_type == arch.removeprefix("tiny-")


def test_bf16_autocast_and_gradient_checkpointing_on_cpu(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path, train={"precision": "bf16", "gradient_checkpointing": True, "max_steps": 2}
    )
    summary, _ = run_recipe(data)
    assert summary["steps"] == 2 and summary["last_loss"] == summary["last_loss"]


@pytest.mark.parametrize("master_weights", ["fp32", "model"])
def test_bf16_loaded_full_fine_tune_updates_fp32_master_weights(
    tmp_path, run_recipe, master_weights
):
    """An Adam step of 1e-4 on a bf16 norm weight of 1.0 rounds to nothing (bf16 spacing at 1.0
    is 2**-7): with fp32 master weights (the default) the update lands, with `model` it is lost."""
    data = recipe_dict(
        tmp_path,
        model={"path": "tune:tiny-llama", "max_seq_len": 64, "dtype": "bfloat16"},
        optimizer={"name": "adamw", "lr": 1e-4},
        train={"precision": "bf16", "max_steps": 2, "master_weights": master_weights},
    )
    run_recipe(data)
    norm = final_weights(tmp_path / "run")["model.norm.weight"]
    moved = float((norm.float() - 1.0).abs().max())
    if master_weights == "fp32":
        assert norm.dtype == torch.float32 and 1e-5 < moved < 1e-3
    else:
        assert norm.dtype == torch.bfloat16 and moved == 0.0


def test_unknown_tiny_model_is_a_user_error(tmp_path, run_recipe):
    with pytest.raises(TuneError, match="tune:tiny-llama"):
        run_recipe(recipe_dict(tmp_path, model={"path": "tune:tiny-gpt"}))


def test_cli_help_and_plugins_list_import_no_torch():
    code = (
        "import sys\n"
        "from tune.cli import main\n"
        "for argv in (['--help'], ['plugins', 'list'], ['recipes', 'list'], ['validate', 'recipes/quickstart.toml']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr + res.stdout


def test_version_and_module_entry_point():
    res = run_cli("--version")
    assert res.returncode == 0 and "tune, version" in res.stdout


def test_samples_during_training_go_to_samples_jsonl(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        model={"config_overrides": {"attention_dropout": 0.1}},
        generate={"prompts": ["reverse hi", "reverse ok"], "max_new_tokens": 3, "every": 2},
        train={"max_steps": 5},
    )
    summary, _ = run_recipe(data)
    lines = (tmp_path / "run/samples.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [(r["step"], r["prompt"]) for r in records] == [
        (2, "reverse hi"), (2, "reverse ok"),
        (4, "reverse hi"), (4, "reverse ok"),
        (5, "reverse hi"), (5, "reverse ok"),
    ]  # fmt: skip
    assert [r["reply"] for r in records[-2:]] == [s["reply"] for s in summary["samples"]]
    # sampling mid-run does not perturb training (dropout on: train mode must be back)
    data["generate"]["every"] = 0
    data["train"]["output_dir"] = str(tmp_path / "plain")
    run_recipe(data, name="plain.toml")
    assert max_weight_diff(final_weights(tmp_path / "run"), final_weights(tmp_path / "plain")) == 0
