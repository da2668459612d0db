"""DeepSpeed for real on CPU: ZeRO-2/3 with 2 gloo processes, parity, resume, consolidated output,
refusals at validation and of a checkpoint whose pickle could run code."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
from tune.testing import (
    CodeRunningPickle,
    final_weights,
    launch,
    max_weight_diff,
    recipe_dict,
    refusal_paragraph,
    rewrite_manifest,
    run_cli,
    sgd_step,
    step_difference,
    train_losses,
    write_plugin,
    write_recipe,
)

pytest.importorskip("deepspeed")
pytest.importorskip("peft")

PLAIN_PEFT = """
import sys, json
sys.modules["tune"] = None
sys.modules["deepspeed"] = None  # the artifact needs neither
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
adapter = sys.argv[1]
base = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
print(json.dumps(float(model(input_ids=torch.tensor([[1, 40, 50]])).logits.abs().mean())))
"""


# A quantization backend for the refusal tests: what ZeRO-3 refuses is any quantized model, so
# the check does not need bitsandbytes (nothing is loaded at validation).
QUANT_PLUGIN = """
from tune.plugin import Quantization, hookimpl


class FourBit(Quantization):
    def config(self):
        raise RuntimeError("validation only")


@hookimpl
def tune_provide(provide):
    provide.quantization("test4bit", doc="a stand-in 4-bit quantization", build=FourBit)
"""


def one_rank(*args):
    """`tune ARGS` as the only rank of a world of one, without torchrun: tune's own exit code
    and message (torchrun reports a failed rank as its own failure)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return run_cli(*args, env=env)


def lora_recipe(tmp_path, out, strategy, **train):
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"lr": 5e-3},
        strategy=strategy,
        train={"output_dir": str(tmp_path / out), "max_steps": 4, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


@pytest.fixture(scope="module")
def single_sgd(tmp_path_factory):
    """One process, global batch 4, one SGD step: the reference for every strategy."""
    return sgd_step(tmp_path_factory.mktemp("single"), "single", {"name": "single"}, 4, 1, 1)


def check_parity(single, tmp_path, strategy, micro, accum):
    loss_diff, weight_diff = step_difference(
        single, sgd_step(tmp_path, "dist", strategy, micro, accum, 2)
    )
    print(f"{strategy}: first-step loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "low_memory"), [(2, False), (3, False), (3, True)])
def test_zero_step_equals_single_process(single_sgd, tmp_path, stage, low_memory):
    """low_memory: ZeRO-3 builds the model partitioned and each rank reads its partitions."""
    strategy = {"name": "deepspeed", "zero_stage": stage, "low_memory_load": low_memory}
    check_parity(single_sgd, tmp_path, strategy, 1, 2)
    if low_memory:  # built from the config alone: the checkpoint's generation defaults kept
        from tune.testing import tiny_model

        saved = json.loads((tmp_path / "dist/final/generation_config.json").read_text())
        base = json.loads((tiny_model() / "generation_config.json").read_text())
        assert {k: saved.get(k) for k in base if k != "transformers_version"} == {
            k: v for k, v in base.items() if k != "transformers_version"
        }


@pytest.mark.slow
def test_zero3_lora_trains_and_final_loads_without_deepspeed(tmp_path):
    # Low-memory loading is the default: each rank read its partitions from the files.
    low = lora_recipe(tmp_path, "low", {"name": "deepspeed", "zero_stage": 3}, max_steps=4)
    res = launch(low)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "each rank read its ZeRO-3 partition of" in res.stdout
    assert train_losses(tmp_path / "low")[-1] < train_losses(tmp_path / "low")[0]
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT, str(tmp_path / "low/final")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) > 0
    # The ZeRO-2 comparison loads the ordinary way on both sides: an ordinary load draws from
    # the random generator (transformers' _init_weights runs during from_pretrained), a
    # partitioned one does not, so LoRA's random A matrices would start from other draws.
    # (Whether the partitions were read right is checked exactly by the SGD step test.)
    z3 = lora_recipe(
        tmp_path,
        "z3",
        {"name": "deepspeed", "zero_stage": 3, "low_memory_load": False},
        max_steps=4,
    )
    res = launch(z3)
    assert res.returncode == 0, res.stderr[-3000:]
    z2 = lora_recipe(
        tmp_path,
        "z2",
        {"name": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu"},
        max_steps=4,
    )
    res = launch(z2)
    assert res.returncode == 0, res.stderr[-3000:]
    # The same math sharded two ways (and with the optimizer offloaded) gives the same adapter,
    # up to float reordering amplified by Adam's first steps (lr 5e-3: 1e-4 is 2% of one step).
    assert max_weight_diff(final_weights(tmp_path / "z2"), final_weights(tmp_path / "z3")) <= 1e-4


ZERO2 = {"name": "deepspeed", "zero_stage": 2}
RESUMABLE = {"max_steps": 6, "save_every": 3, "keep_last": 3}


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory):
    """A ZeRO-2 LoRA run of 6 steps that keeps its step-3 checkpoint."""
    tmp = tmp_path_factory.mktemp("zero2")
    res = launch(lora_recipe(tmp, "straight", ZERO2, **RESUMABLE))
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "straight"


@pytest.mark.slow
def test_zero2_resume_continues_exactly(zero2_run, tmp_path):
    straight = zero2_run
    assert (straight / "checkpoints/step-3/deepspeed").is_dir()
    resumed = lora_recipe(tmp_path, "resumed", ZERO2, **RESUMABLE)
    res = launch(resumed, 2, "--resume-from", str(straight / "checkpoints/step-3"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert max_weight_diff(final_weights(straight), final_weights(tmp_path / "resumed")) <= 1e-6
    assert train_losses(tmp_path / "resumed") == pytest.approx(train_losses(straight)[3:], abs=1e-6)


@pytest.mark.slow
def test_a_checkpoint_whose_pickle_could_run_code_is_refused(zero2_run, tmp_path):
    """DeepSpeed reads its states with torch.load(weights_only=False): a model states file
    holding anything beyond tensors and DeepSpeed's own classes must never reach it."""
    import torch

    checkpoint = tmp_path / "step-3"
    shutil.copytree(zero2_run / "checkpoints/step-3", checkpoint)
    marker = tmp_path / "PWNED"
    states = checkpoint / "deepspeed/mp_rank_00_model_states.pt"
    torch.save({"module": {}, "ds_version": "0", "payload": CodeRunningPickle(marker)}, states)
    rewrite_manifest(checkpoint)  # the manifest agrees: only the pickle check stands in the way
    path = lora_recipe(tmp_path, "evil", ZERO2, **RESUMABLE)
    # As the only rank (the checkpoint was written by 2: --resume-changed accepts that).
    res = one_rank("run", str(path), "--resume-from", str(checkpoint), "--resume-changed")
    message = refusal_paragraph(res)
    assert "mp_rank_00_model_states.pt" in message and "could run code" in message, message
    assert "system" in message, message  # names what it would import
    assert not marker.exists()


@pytest.mark.parametrize(
    ("strategy", "model", "expected"),
    [
        (
            {"zero_stage": 3},
            {"quantize": "test4bit"},
            "[strategy] name = 'deepspeed' cannot train a quantized model (quantize = 'test4bit') "
            "(with zero_stage = 3: ZeRO-3 partitions every parameter",
        ),
        (
            {"zero_stage": 2, "offload_params": "cpu"},
            {},
            "offload_params = 'cpu' needs zero_stage = 3 (only ZeRO-3 partitions parameters), "
            "but zero_stage = 2; set zero_stage = 3",
        ),
        (
            {"zero_stage": 3, "offload_params": "nvme"},
            {},
            "nvme offload needs nvme_path, a folder on a fast local disk; add nvme_path",
        ),
    ],
)
def test_incompatible_combinations_are_refused_at_validation(tmp_path, strategy, model, expected):
    env = write_plugin(tmp_path, "quant_plugin", QUANT_PLUGIN)
    data = recipe_dict(tmp_path, model=model, strategy={"name": "deepspeed", **strategy})
    res = run_cli("validate", str(write_recipe(tmp_path, data)), "-p", "quant_plugin", env=env)
    assert expected in refusal_paragraph(res)


def test_quantized_models_train_with_zero2(tmp_path):
    """The capabilities follow the settings: ZeRO-2 replicates the (4-bit) base."""
    env = write_plugin(tmp_path, "quant_plugin", QUANT_PLUGIN)
    data = recipe_dict(
        tmp_path, model={"quantize": "test4bit"}, strategy={"name": "deepspeed", "zero_stage": 2}
    )
    res = run_cli("validate", str(write_recipe(tmp_path, data)), "-p", "quant_plugin", env=env)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_raw_json_may_not_disagree_on_batch_sizes(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    path = lora_recipe(tmp_path, "js", {"name": "deepspeed", "config": str(tmp_path / "ds.json")})
    res = launch(path)
    assert res.returncode != 0
    assert "train_micro_batch_size_per_gpu = 16" in res.stdout + res.stderr


@pytest.mark.slow
def test_low_memory_load_falls_back_when_the_files_lack_a_weight(tmp_path):
    """Each rank reads its partitions from the files only when they hold every weight under its
    own name; otherwise (a missing weight here; fused or renamed keys in converted checkpoints)
    transformers loads under zero.Init the ordinary way and initializes what is missing."""
    import shutil

    from safetensors.torch import load_file, save_file
    from tune.testing import tiny_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model(), folder)
    weights = load_file(folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    data = recipe_dict(
        tmp_path,
        model={"path": str(folder), "max_seq_len": 64},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        strategy={"name": "deepspeed", "zero_stage": 3},
        train={"output_dir": str(tmp_path / "run"), "max_steps": 1},
    )
    res = launch(write_recipe(tmp_path, data))
    assert res.returncode == 0, res.stderr[-3000:]
    out = " ".join(res.stdout.split())
    assert "do not hold every weight under its own name" in out
    assert "each rank read its ZeRO-3 partition" not in out
