"""FSDP2 for real: 2 processes on gloo. Per-step parity with one process, exact resume, final/
loadable by plain transformers/peft, refusals at validation and of a checkpoint whose pickle
could run code."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys

import pytest
from tune.testing import (
    SGD_PLUGIN,
    CodeRunningPickle,
    final_weights,
    launch,
    max_weight_diff,
    recipe_dict,
    refusal_paragraph,
    rewrite_manifest,
    run_cli,
    train_losses,
    write_plugin,
    write_recipe,
)

# SGD with momentum (tune.testing's SGD plugin): updates are proportional to the gradient (any
# normalization error shows in the weights) and the optimizer has state, so resume must restore
# it from the DCP shards.

LORA = [{"method": "lora", "r": 4, "alpha": 8, "targets": "all-linear"}]

# final/ loads with no tune (and no torch.distributed) at all.
PLAIN_LOAD = """
import sys, json
sys.modules["tune"] = None
import torch
from transformers import AutoModelForCausalLM
path = sys.argv[1]
try:
    base = json.load(open(path + "/adapter_config.json"))["base_model_name_or_path"]
except FileNotFoundError:
    model = AutoModelForCausalLM.from_pretrained(path)
else:
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)
print(json.dumps(float(model(input_ids=torch.tensor([[1, 40, 50]])).logits.abs().mean())))
"""


# A quantization backend for the refusal test: FSDP2 refuses any quantized model, so the check
# does not need bitsandbytes (nothing is loaded at validation).
QUANT_PLUGIN = """
from tune.plugin import Quantization, hookimpl


class FourBit(Quantization):
    def config(self):
        raise RuntimeError("validation only")


@hookimpl
def tune_provide(provide):
    provide.quantization("test4bit", doc="a stand-in 4-bit quantization", build=FourBit)
"""


def one_rank(*args, env):
    """`tune ARGS` as the only rank of a world of one, without torchrun: tune's own exit code
    and message (torchrun reports a failed rank as its own failure)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**env, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return run_cli(*args, env=env)


def write(tmp_path, out, strategy, adapt=(), **train):
    data = recipe_dict(
        tmp_path,
        adapt=list(adapt),
        optimizer={"name": "sgd", "lr": 0.2, "momentum": 0.9},
        strategy=strategy,
        data={"shuffle": False},
        train={"output_dir": str(tmp_path / out), "max_grad_norm": 1.0, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


def go(path, nproc, env, *extra):
    res = launch(path, nproc, "-p", "sgd_plugin", *extra, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (path.parent / f"{path.stem}.out").write_text(res.stdout, encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Global batch 4 for 4 steps: one process (4 x 1) versus FSDP2 on 2 ranks (1 x 2 each, so
    accumulation without sync is exercised); the LoRA run saves at step 2 and is resumed."""
    tmp = tmp_path_factory.mktemp("fsdp")
    env = write_plugin(tmp, "sgd_plugin", SGD_PLUGIN)
    single = {"name": "single"}
    fsdp = {"name": "fsdp"}
    dist = {"micro_batch_size": 1, "grad_accum": 2}
    go(write(tmp, "single_full", single), 1, env)
    go(write(tmp, "fsdp_full", fsdp, **dist, gradient_checkpointing=True), 2, env)
    go(write(tmp, "single_lora", single, LORA), 1, env)
    lora = {**dist, "save_every": 2}
    go(write(tmp, "fsdp_lora", fsdp, LORA, **lora), 2, env)
    resumed = write(tmp, "fsdp_lora_resumed", fsdp, LORA, **lora)
    go(resumed, 2, env, "--resume-from", str(tmp / "fsdp_lora/checkpoints/step-2"))
    # The same checkpoint at world size 1 (torchrun with one process; 4 micro-batches of 1 keep
    # the global batch): DCP re-shards weights and optimizer state on load.
    one = write(tmp, "fsdp_lora_ws1", fsdp, LORA, micro_batch_size=1, grad_accum=4)
    ckpt = str(tmp / "fsdp_lora/checkpoints/step-2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    cmd += ["-m", "tune", "run", str(one), "-p", "sgd_plugin", "--resume-from", ckpt]
    full_env = {**os.environ, **env}
    res = subprocess.run([*cmd, "--resume-changed"], capture_output=True, text=True, env=full_env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fsdp_per_step_losses_equal_one_process(runs, kind):
    one, two = train_losses(runs / f"single_{kind}"), train_losses(runs / f"fsdp_{kind}")
    assert len(one) == len(two) == 4
    assert one[-1] < one[0]  # it learns
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= 1e-5, (one, two)
    weights = max_weight_diff(
        final_weights(runs / f"single_{kind}"), final_weights(runs / f"fsdp_{kind}")
    )
    assert weights <= 1e-5


@pytest.mark.slow
def test_low_memory_load_reads_base_shards_and_sends_adapters(runs):
    """Rank 1 built the model on the meta device: the base came from the files row by row,
    the LoRA weights (not in any file) from rank 0."""
    out = " ".join((runs / "fsdp_lora.out").read_text().split())  # undo console wrapping
    found = re.search(r"low-memory load: (\d+) weights read .*?, (\d+) sent by rank 0", out)
    assert found, out[-2000:]
    read, sent = map(int, found.groups())
    assert read == 4 * 9 + 1 + 1  # 4 layers x (7 linear + 2 norms), embeddings, final norm
    assert sent == 4 * 7 * 2  # lora_A and lora_B of every linear layer


@pytest.mark.slow
def test_fsdp_resume_continues_exactly(runs):
    assert (runs / "fsdp_lora/checkpoints/step-2/fsdp/.metadata").exists()  # DCP shards
    straight, resumed = runs / "fsdp_lora", runs / "fsdp_lora_resumed"
    assert train_losses(resumed) == pytest.approx(train_losses(straight)[2:], abs=1e-6)
    assert max_weight_diff(final_weights(straight), final_weights(resumed)) <= 1e-6


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_at_another_world_size(runs):
    straight, one = runs / "fsdp_lora", runs / "fsdp_lora_ws1"
    assert train_losses(one) == pytest.approx(train_losses(straight)[2:], abs=1e-5)
    assert max_weight_diff(final_weights(straight), final_weights(one)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_fsdp_final_loads_without_tune(runs, kind):
    final = runs / f"fsdp_{kind}" / "final"
    if kind == "full":
        config = json.loads((final / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(final)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reference = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(runs / f"single_{kind}" / "final")],
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout) == pytest.approx(json.loads(reference.stdout), abs=1e-4)


@pytest.mark.slow
def test_a_checkpoint_whose_metadata_pickle_could_run_code_is_refused(runs, tmp_path):
    """DCP reads `.metadata` with pickle.load: one that needs anything beyond torch's allow-list
    and DCP's metadata classes must never reach it."""
    checkpoint = tmp_path / "step-2"
    shutil.copytree(runs / "fsdp_lora/checkpoints/step-2", checkpoint)
    marker = tmp_path / "PWNED"
    (checkpoint / "fsdp/.metadata").write_bytes(pickle.dumps(CodeRunningPickle(marker), protocol=2))
    rewrite_manifest(checkpoint)  # the manifest agrees: only the pickle check stands in the way
    env = write_plugin(tmp_path, "sgd_plugin", SGD_PLUGIN)
    path = write(tmp_path, "evil", {"name": "fsdp"}, LORA, micro_batch_size=1, grad_accum=2)
    # As the only rank (the checkpoint was written by 2: --resume-changed accepts that).
    extra = ("-p", "sgd_plugin", "--resume-from", str(checkpoint), "--resume-changed")
    res = one_rank("run", str(path), *extra, env=env)
    message = refusal_paragraph(res)
    assert ".metadata" in message and "could run code" in message, message
    assert "system" in message, message  # names what it would import
    assert not marker.exists()


@pytest.mark.parametrize(
    ("model", "train", "expected"),
    [
        (
            {"quantize": "test4bit"},
            {},
            "[strategy] name = 'fsdp' cannot train a quantized model (quantize = 'test4bit') "
            "(bitsandbytes stores 4-bit weights as packed uint8 Params4bit",
        ),
        (
            {},
            {"precision": "fp16"},
            "precision = 'fp16' is not supported by [strategy] name = 'fsdp' (fp16 would need a "
            "sharded loss scaler)",
        ),
    ],
)
def test_unsupported_combinations_are_refused_at_validation(tmp_path, model, train, expected):
    env = write_plugin(tmp_path, "quant_plugin", QUANT_PLUGIN)
    data = recipe_dict(tmp_path, model=model, strategy={"name": "fsdp"}, train=train)
    res = run_cli("validate", str(write_recipe(tmp_path, data)), "-p", "quant_plugin", env=env)
    assert expected in refusal_paragraph(res)
