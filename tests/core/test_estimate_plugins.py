"""`tune estimate` asks the recipe's backends: objectives through their capabilities, every other
kind through `estimate=`; the advice tries the installed backends and names them."""

from __future__ import annotations

import pytest
from pydantic import Field
from tune.estimate import estimate
from tune.plugin import (
    Capabilities,
    Objective,
    OptimizerSettings,
    Quantization,
    Settings,
    Strategy,
    TuneError,
    hookimpl,
    memory,
)
from tune.testing import load_recipe, plugin_manager

GiB = 1 << 30


@pytest.fixture(autouse=True)
def _no_local_gpu(monkeypatch):
    import tune.estimate as mod

    monkeypatch.setattr(mod, "local_gpus", lambda: [])


def _term(est, prefix: str) -> memory.MemoryTerm:
    return next(t for t in est.terms if t.name.startswith(prefix))


# -- objectives: full logits and sequences per example -----------------------------------------
class Objectives:
    """Objectives that say different things about their logits."""

    @hookimpl
    def tune_provide(self, provide):
        full = Capabilities(full_logits=True)
        pairs = Capabilities(full_logits=False, sequences_per_example=2)
        provide.objective("whole", doc="builds full logits", build=Objective, capabilities=full)
        provide.objective("quiet", doc="says nothing", build=Objective)
        provide.objective("pairs", doc="chunked pairs", build=Objective, capabilities=pairs)


@pytest.mark.parametrize("name", ["whole", "quiet"])
def test_an_objective_with_full_logits_has_them_counted(make_recipe, tune_plugin, name):
    tune_plugin(Objectives(), "objectives")
    default = estimate(load_recipe(make_recipe(name="a.toml")), gpus=1)
    recipe = load_recipe(make_recipe(name="b.toml", objective={"name": name}))
    est = estimate(recipe, gpus=1)
    s = est.setup
    assert _term(default, "logits").name == "logits (chunked loss: one chunk)"
    assert default.setup.chunked and not est.setup.chunked
    logits = _term(est, "logits")
    assert logits.name == "logits"
    assert logits.bytes == s.micro_batch * s.seq * s.shapes.vocab * 12  # fp32 on CPU
    said = "computes the full logits" if name == "whole" else "does not declare full_logits"
    assert any(f"objective {name} {said}" in note for note in s.notes)
    assert not any("objective" in note for note in default.setup.notes)


def test_sequences_per_example_multiply_the_activations(make_recipe, tune_plugin):
    tune_plugin(Objectives(), "objectives")
    one = estimate(load_recipe(make_recipe(name="a.toml")), gpus=1)
    two = estimate(load_recipe(make_recipe(name="b.toml", objective={"name": "pairs"})), gpus=1)
    assert two.setup.chunked and two.setup.sequences == 2
    assert _term(two, "activations").bytes == 2 * _term(one, "activations").bytes


# -- a third party's quantization, optimizer and strategy --------------------------------------
class HalfSettings(Settings):
    shard: bool = Field(False, description="shard everything")


def two_bit(settings, plan: memory.Plan) -> list[memory.MemoryTerm]:
    lin = plan.shape.decoder_linear_params()
    rest = plan.shape.total_params() - lin
    return [
        memory.MemoryTerm("weights, 2-bit (decoder linears)", lin / 4, f"{lin:,} x 0.25 B"),
        memory.MemoryTerm("weights, as loaded (the rest)", rest * plan.weight_bytes, f"{rest:,}"),
    ]


def one_byte_state(settings, plan: memory.Plan) -> memory.OptimizerState:
    return memory.OptimizerState(plan.trainable, f"{plan.trainable:,} x 1 B")


def halves(settings, plan: memory.Plan) -> memory.Sharding:
    buffer = memory.MemoryTerm("halves buffer", 12345, "a fixed buffer", phases=("compute",))
    if settings.shard:
        return memory.Sharding(stage=3, terms=(buffer,))
    return memory.Sharding(stage=1, terms=(buffer,), variants=({"shard": True},))


class ThirdParty:
    """A quantization, an optimizer and a strategy with their own estimates, and an optimizer
    without one."""

    @hookimpl
    def tune_provide(self, provide):
        provide.quantization("q2", doc="2-bit", build=Quantization, estimate=two_bit)
        provide.optimizer("onebyte", OptimizerSettings, doc="1 B state", estimate=one_byte_state)
        provide.optimizer("mystery", OptimizerSettings, doc="says nothing")
        provide.strategy(
            "halves",
            HalfSettings,
            doc="shards",
            capabilities=Capabilities(processes="many"),
            estimate=halves,
        )

    @hookimpl
    def tune_build_optimizer(self, name, settings, params, ctx):  # pragma: no cover
        raise NotImplementedError

    @hookimpl
    def tune_choose_strategy(self, name, settings, ctx):  # pragma: no cover
        return Strategy()


def test_a_third_party_backends_estimates_are_used(make_recipe, tune_plugin):
    tune_plugin(ThirdParty(), "third_party")
    recipe = load_recipe(
        make_recipe(
            model={"path": "tune:tiny-llama", "max_seq_len": 64, "quantize": "q2"},
            adapt=[{"method": "lora", "r": 8, "targets": "all-linear"}],
            optimizer={"name": "onebyte"},
            strategy={"name": "halves"},
        )
    )
    est = estimate(recipe, gpus=2)
    sh = est.setup.shapes
    lin = sh.layers * sh.layer_linear_params()
    assert _term(est, "weights, 2-bit").bytes == lin / 4
    trainable = sum(a.params for a in est.setup.adapters)
    assert trainable > 0
    state = _term(est, "optimizer state (onebyte)")
    assert state.bytes == trainable / 2  # stage 1: sharded over the 2 ranks
    assert state.formula == f"{trainable:,} x 1 B / 2 ranks"
    assert _term(est, "halves buffer").bytes == 12345
    assert not any("declares no memory estimate" in note for note in est.setup.notes)


def test_a_backend_without_an_estimate_gets_the_default_and_a_note(make_recipe, tune_plugin):
    tune_plugin(ThirdParty(), "third_party")
    adamw = estimate(load_recipe(make_recipe(name="a.toml")), gpus=1)
    recipe = load_recipe(make_recipe(name="b.toml", optimizer={"name": "mystery"}))
    est = estimate(recipe, gpus=1)
    assert _term(est, "optimizer state (mystery)").bytes == _term(adamw, "optimizer state").bytes
    assert any("'mystery' declares no memory estimate" in note for note in est.setup.notes)


def test_a_wrong_answer_names_the_plugin(make_recipe, tune_plugin):
    class Wrong:
        @hookimpl
        def tune_provide(self, provide):
            wrong = lambda s, p: {"bytes": 1}  # noqa: E731
            provide.optimizer("wrong", OptimizerSettings, doc="answers a dict", estimate=wrong)

        @hookimpl
        def tune_build_optimizer(self, name, settings, params, ctx):  # pragma: no cover
            raise NotImplementedError

    tune_plugin(Wrong(), "wrong_plugin")
    recipe = load_recipe(make_recipe(optimizer={"name": "wrong"}))
    with pytest.raises(TypeError, match="optimizer:wrong.*wrong_plugin.*OptimizerState"):
        estimate(recipe, gpus=1)


def test_an_adapter_estimate_refuses_what_it_cannot_count(make_recipe):
    pytest.importorskip("tune_plugin_peft")
    recipe = load_recipe(make_recipe(adapt=[{"method": "loha"}]))
    with pytest.raises(TuneError, match="not 'loha'") as error:
        estimate(recipe, gpus=1)
    assert "[[adapt]] 0" in str(error.value.where)


# -- advice: from the installed backends, named by them ----------------------------------------
def _tight(make_recipe, **sections):
    """A ~0.4B-parameter Llama (config only) that a 6 GiB device cannot fully fine-tune."""
    overrides = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "vocab_size": 32000,
    }
    model = {"path": "tune:tiny-llama", "max_seq_len": 2048, "config_overrides": overrides}
    train = {"micro_batch_size": 2, "gradient_checkpointing": True, "precision": "auto"}
    return load_recipe(make_recipe(model=model, train=train, **sections))


def test_advice_tries_the_installed_backends_and_names_them(make_recipe):
    pytest.importorskip("tune_plugin_deepspeed")
    pytest.importorskip("tune_plugin_fsdp")
    pytest.importorskip("tune_plugin_bitsandbytes")
    pm = plugin_manager()
    est = estimate(_tight(make_recipe), gpus=4, gpu_memory=6 * GiB, plugins=pm)
    assert not est.fits
    advice = "\n".join(est.advice)
    assert "-o optimizer.name=adamw_8bit (tune-plugin-bitsandbytes): peak" in advice
    assert "-o strategy.name=fsdp (tune-plugin-fsdp), 4 ranks: peak" in advice
    assert "-o strategy.name=deepspeed" in advice and "(tune-plugin-deepspeed), 4 ranks" in advice
    for line in est.advice:  # each one fits
        assert float(line.rsplit("peak ", 1)[1].split()[0]) * GiB <= 6 * GiB - 0.75 * GiB
    without = estimate(_tight(make_recipe), gpus=4, gpu_memory=6 * GiB)
    assert not any("strategy.name" in line or "optimizer.name" in line for line in without.advice)


def test_advice_offers_a_strategys_own_variants(make_recipe, tune_plugin):
    tune_plugin(ThirdParty(), "third_party")
    pm = plugin_manager()
    recipe = _tight(make_recipe, strategy={"name": "halves"})
    est = estimate(recipe, gpus=8, gpu_memory=4 * GiB, plugins=pm)
    assert not est.fits
    assert any(line.startswith("-o strategy.shard=true: peak") for line in est.advice)


def test_advice_from_a_deepspeed_recipe_names_its_settings(make_recipe):
    pytest.importorskip("tune_plugin_deepspeed")
    recipe = _tight(make_recipe, strategy={"name": "deepspeed"})
    est = estimate(recipe, gpus=1, gpu_memory=5e9, plugins=plugin_manager())
    assert not est.fits
    assert any(line.startswith("-o strategy.offload_optimizer=cpu: peak") for line in est.advice)
