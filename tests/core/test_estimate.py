"""`tune estimate`: its terms against real models, PEFT and autograd; fits and advice; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tune.errors import TuneError
from tune.estimate import estimate, parse_size
from tune.testing import build_model, load_recipe

GiB = 1 << 30
# Until `estimate` is on tune.cli's import line, the command registers when its module loads.
CLI = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr))\n"
    "import tune.cli.estimate\n"
    "from tune.cli import main\n"
    "main()\n"
)


@pytest.fixture(autouse=True)
def _no_local_gpu(monkeypatch):
    """Estimates target this machine's host RAM unless a test names --gpu-memory."""
    import tune.estimate as mod

    monkeypatch.setattr(mod, "local_gpus", lambda: [])


def _term(est, prefix: str):
    return next(t for t in est.terms if t.name.startswith(prefix))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_weights_term_is_the_real_models_bytes(make_recipe, tmp_path, name):
    recipe = load_recipe(make_recipe(model={"path": f"tune:{name}", "max_seq_len": 64}))
    est = estimate(recipe, gpus=1)
    model, _ = build_model(recipe, tmp_path)
    params = list(model.parameters())
    assert est.setup.shapes.total_params() == sum(p.numel() for p in params)
    assert _term(est, "weights").bytes == sum(p.numel() * p.element_size() for p in params)
    assert _term(est, "gradients").bytes == sum(p.numel() * 4 for p in params)
    assert _term(est, "optimizer state").bytes == sum(p.numel() * 8 for p in params)


@pytest.mark.parametrize(
    "step",
    [
        {"method": "lora", "r": 8, "targets": "all-linear"},
        {"method": "lora", "r": 4},  # PEFT's default targets for Llama: q_proj, v_proj
        {"method": "dora", "r": 4, "targets": ["q_proj", "down_proj"]},
        {"method": "ia3"},
        {"method": "lora", "r": 2, "targets": ["o_proj"], "modules_to_save": ["lm_head"]},
    ],
)
def test_adapter_count_is_peft_trainable_count(make_recipe, tmp_path, step):
    recipe = load_recipe(make_recipe(adapt=[step]))
    est = estimate(recipe, gpus=1)
    model, _ = build_model(recipe, tmp_path)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(a.params for a in est.setup.adapters) == trainable
    assert _term(est, "adapter weights").bytes == trainable * 4


@pytest.mark.parametrize(("adapt", "checkpointing"), [(False, False), (True, False), (False, True)])
def test_activation_term_is_what_autograd_saves(make_recipe, adapt, checkpointing, tmp_path):
    """Bytes autograd keeps for backward after the forward (weights excluded): exactly the
    activation term plus the fp32 log-softmax (4 of the 12 logits bytes per position)."""
    import torch

    sections = {"train": {"gradient_checkpointing": checkpointing, "chunked_loss": False}}
    if adapt:
        sections["adapt"] = [{"method": "lora", "r": 8, "targets": "all-linear"}]
    recipe = load_recipe(make_recipe(**sections))
    est = estimate(recipe, gpus=1)
    model, _ = build_model(recipe, tmp_path)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch, seq = est.setup.micro_batch, est.setup.seq
    ids = torch.randint(0, 250, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    logsoftmax = batch * seq * est.setup.shapes.vocab * 4
    activations = _term(est, "activations")
    expected = activations.bytes
    if checkpointing:  # the recomputed layer exists in backward only
        sh = est.setup.shapes
        expected = sh.layers * batch * seq * sh.hidden * 4 + batch * seq * (3 * sh.hidden + 1) * 4
    assert sum(saved.values()) - logsoftmax == pytest.approx(expected, rel=0.01)


def test_quantized_and_sharded_terms(make_recipe):
    """nf4: ~0.52 B per decoder-linear weight; ZeRO-3 divides weights, grads and state by N."""
    overrides = ["model.quantize=nf4", "adapt.0.method=lora"]
    recipe = load_recipe(make_recipe(adapt=[{"method": "lora"}]), overrides=overrides[:1])
    est = estimate(recipe, gpus=1, gpu_memory=80e9)
    sh = est.setup.shapes
    lin = sh.layers * sh.layer_linear_params()
    assert _term(est, "weights, nf4").bytes == pytest.approx(lin * (0.5 + 1 / 64 + 4 / 64 / 256))
    assert _term(est, "weights, unquantized").bytes == (sh.total_params() - lin) * 4
    on_cpu = estimate(recipe, gpus=1)  # the unquantized weights stay views of the mapped file
    assert _term(on_cpu, "checkpoint file").bytes == sh.total_params() * 4
    plugins = ("tune_plugin_deepspeed",)
    single = load_recipe(make_recipe(name="a.toml"))
    zero3 = load_recipe(
        make_recipe(name="b.toml", strategy={"name": "deepspeed", "zero_stage": 3}), plugins
    )
    one, four = estimate(single, gpus=1), estimate(zero3, gpus=4)
    for prefix in ("weights", "gradients", "optimizer state"):
        assert _term(four, prefix).bytes == pytest.approx(_term(one, prefix).bytes / 4)
    assert _term(four, "fp32 master partition").bytes == _term(one, "weights").bytes / 4


def _big(make_recipe, **train):
    """A config-only 'tiny' Llama of ~0.4B parameters: never built, only estimated."""
    overrides = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "vocab_size": 32000,
    }
    return load_recipe(
        make_recipe(
            model={"path": "tune:tiny-llama", "max_seq_len": 2048, "config_overrides": overrides},
            train={"micro_batch_size": 8, **train},
        )
    )


def test_fits_and_advice(make_recipe):
    recipe = _big(make_recipe)
    roomy = estimate(recipe, gpu_memory=80e9)
    assert roomy.fits and roomy.setup.device == "gpu"
    assert roomy.max_micro_batch >= 8
    tight = estimate(recipe, gpu_memory=12 * GiB)
    assert not tight.fits
    assert any("gradient_checkpointing=true" in line for line in tight.advice)
    budget = 12 * GiB - tight.as_dict()["overhead_bytes"]
    # the largest micro-batch that fits is the boundary: one more does not fit
    from tune.estimate import peak_of

    mb = tight.max_micro_batch
    assert 1 <= mb < 8
    assert peak_of(_replace(tight.setup, micro_batch=mb))[0] <= budget
    assert peak_of(_replace(tight.setup, micro_batch=mb + 1))[0] > budget
    seq = tight.max_seq_len
    assert (
        peak_of(_replace(tight.setup, seq=seq + 1))[0]
        > budget
        >= peak_of(_replace(tight.setup, seq=seq))[0]
    )


def _replace(setup, **change):
    import dataclasses

    return dataclasses.replace(setup, notes=[], **change)


def test_checkpointing_and_chunked_loss_shrink_the_peak(make_recipe):
    plain = estimate(_big(make_recipe, chunked_loss=False), gpu_memory=80e9)
    ckpt = estimate(_big(make_recipe, chunked_loss=False, gradient_checkpointing=True), 80e9)
    chunked = estimate(_big(make_recipe), gpu_memory=80e9)
    assert ckpt.phases["compute"] < plain.phases["compute"]
    assert _term(chunked, "logits").bytes < _term(plain, "logits").bytes / 10


def test_parse_size():
    assert parse_size("80GB") == 80e9
    assert parse_size("24GiB") == 24 * GiB
    assert parse_size("512 MiB") == 512 << 20
    with pytest.raises(TuneError):
        parse_size("lots")


def test_cli_exit_codes_table_and_no_torch(make_recipe, tmp_path):
    recipe = make_recipe()
    ok = _cli("estimate", str(recipe), "--gpu-memory", "80GB")
    assert ok.returncode == 0, ok.stderr
    assert "weights (trainable)" in ok.stdout and "fits" in ok.stdout
    assert "TORCH False" in ok.stderr
    big = make_recipe(
        name="big.toml",
        model={
            "path": "tune:tiny-llama",
            "config_overrides": {"hidden_size": 4096, "num_hidden_layers": 32},
        },
    )
    tight = _cli("estimate", str(big), "--gpu-memory", "16GB", "--json")
    assert tight.returncode == 1, tight.stderr
    data = json.loads(tight.stdout)
    assert data["fits"] is False and data["peak_bytes"] > 16e9
    bad = _cli("estimate", str(recipe), "-o", "train.micro_batch_sise=2")
    assert bad.returncode == 2 and "micro_batch_size" in bad.stderr
    assert "Traceback" not in bad.stderr
    hub = make_recipe(name="hub.toml", model={"path": "no-such-org/no-such-model"})
    offline = _cli("estimate", str(hub), "--gpu-memory", "80GB")
    assert offline.returncode == 2 and "config.json" in offline.stderr
    size = _cli("estimate", str(recipe), "--gpu-memory", "lots")
    assert size.returncode == 2 and "80GB" in size.stderr


def test_cpu_target_is_host_ram(make_recipe):
    est = estimate(load_recipe(make_recipe()), gpus=None)
    assert est.setup.device == "cpu" and est.capacity_label.startswith("host RAM")
    assert est.setup.weight_dtype == "float32" and est.setup.precision == "fp32"
    assert Path("/proc/meminfo").exists() <= (est.capacity > 1 << 28)


def test_offload_moves_terms_to_the_host(make_recipe):
    strategy = {"name": "deepspeed", "zero_stage": 2}
    plugins = ("tune_plugin_deepspeed",)
    on = load_recipe(
        make_recipe(name="on.toml", strategy={**strategy, "offload_optimizer": "cpu"}), plugins
    )
    off = load_recipe(make_recipe(name="off.toml", strategy=strategy), plugins)
    with_offload, without = estimate(on, gpus=2), estimate(off, gpus=2)
    assert _term(with_offload, "optimizer state").host
    assert not _term(without, "optimizer state").host
    assert with_offload.host > 0 and with_offload.peak < without.peak


def test_fsdp_shards_weights(make_recipe):
    pytest.importorskip("tune_plugin_fsdp")
    recipe = load_recipe(make_recipe(strategy={"name": "fsdp"}), ("tune_plugin_fsdp",))
    one, two = estimate(recipe, gpus=1), estimate(recipe, gpus=2)
    assert _term(two, "weights").bytes == _term(one, "weights").bytes / 2
    assert _term(two, "gathered parameters (FSDP2)").bytes > 0


def test_sequence_parallel_divides_the_sequence_terms_per_rank(make_recipe):
    """Each rank of a sequence-parallel group holds seq / N positions: its activations and
    logits are those of a sequence N times shorter; weights do not change; the longest
    sequence that fits grows."""
    overrides = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24}

    def recipe(sp: int):
        model = {"path": "tune:tiny-llama", "max_seq_len": 4096, "config_overrides": overrides}
        return load_recipe(
            make_recipe(model=model, strategy={"name": "ddp", "sequence_parallel": sp})
        )

    one, two = estimate(recipe(1), gpus=2), estimate(recipe(2), gpus=2)
    half = estimate(
        load_recipe(
            make_recipe(
                model={
                    "path": "tune:tiny-llama",
                    "max_seq_len": 2048,
                    "config_overrides": overrides,
                },
                strategy={"name": "ddp"},
            )
        ),
        gpus=2,
    )
    assert two.setup.local_seq == 2048
    for prefix in ("activations", "logits"):
        assert _term(two, prefix).bytes == _term(half, prefix).bytes
        assert _term(two, prefix).bytes < _term(one, prefix).bytes
    assert _term(two, "weights").bytes == _term(one, "weights").bytes
    assert any("sequence_parallel = 2" in note for note in two.setup.notes)
    assert two.max_seq_len > one.max_seq_len
