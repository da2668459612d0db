"""Activation Beacon, proven on a tiny random Llama in fp32 (BEACON.md's list and more)."""

from __future__ import annotations

import copy

import pytest
import torch
from tune.plugin import RunContext
from tune.testing import load_recipe, recipe_dict, tiny_model, write_recipe
from tune_plugin_beacon.model import (
    BeaconConfig,
    attach,
    beacon_parameters,
    default_sink_size,
    encode,
    max_position,
)


def tiny(arch: str = "tiny-llama", **overrides):
    from transformers import AutoModelForCausalLM

    path = tiny_model(arch, overrides)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def beaconed(cfg: BeaconConfig, arch: str = "tiny-llama", **overrides):
    return attach(tiny(arch, **overrides), cfg)


def randomize_beacon(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in beacon_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


IDS = torch.randint(10, 250, (1, 70), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2", "tiny-mistral"])
def test_ratio_zero_equals_the_plain_model(arch):
    plain = tiny(arch)
    model = beaconed(BeaconConfig(window=16, ratios=[0], inference_ratio=0), arch)
    randomize_beacon(model)  # never used: r = 0 inserts no beacons
    labels = IDS.clone()
    with torch.no_grad():
        a = plain(input_ids=IDS, labels=labels, use_cache=False)
        b = model(input_ids=IDS, labels=labels)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert abs(float(a.loss) - float(b.loss)) < 1e-5


def test_append_mode_shorter_than_a_window_equals_the_plain_model():
    plain = tiny()
    model = beaconed(BeaconConfig(window=128, ratios=[4], inference_ratio=4, pos="append"))
    randomize_beacon(model)
    with torch.no_grad():
        assert torch.allclose(
            plain(input_ids=IDS, use_cache=False).logits, model(input_ids=IDS).logits, atol=1e-5
        )


@pytest.mark.parametrize("ratio", [2, 4])
def test_copied_beacons_behave_like_inserted_eos(ratio):
    """Beacon weights are copies of the base and the beacon embedding is the eos row, so
    raw-position logits equal the plain model's on the sequence with eos after every r tokens."""
    plain = tiny()
    model = beaconed(BeaconConfig(window=128, ratios=[ratio], inference_ratio=ratio))
    eos = plain.config.eos_token_id
    raw = IDS[0].tolist()
    with_eos, raw_slots = [], []
    for j, token in enumerate(raw):
        raw_slots.append(len(with_eos))
        with_eos.append(token)
        if (j + 1) % ratio == 0:
            with_eos.append(eos)
    with torch.no_grad():
        reference = plain(input_ids=torch.tensor([with_eos]), use_cache=False).logits[0, raw_slots]
        ours = model(input_ids=IDS).logits[0]
    assert torch.allclose(reference, ours, atol=1e-5)


@pytest.mark.parametrize(("ratio", "sink"), [(4, 0), (8, 0), (4, 3)])
def test_memory_length_and_positions_stay_bounded(ratio, sink):
    cfg = BeaconConfig(window=32, ratios=[ratio], inference_ratio=ratio, sink_size=sink)
    model = beaconed(cfg, max_position_embeddings=128)
    n = 4096  # 32x the base model's position range
    ids = torch.randint(10, 250, (1, n), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden, state = encode(model, ids)
    windows = n // cfg.window
    assert hidden.shape[1] == n
    assert all(k.shape[2] == sink + windows * cfg.window // ratio for k in state.memory_k)
    assert state.max_position <= max_position(cfg, n, ratio)
    assert state.max_position < n // 2  # far inside what full attention would use (n)


@pytest.mark.parametrize("pos", ["interleave", "append"])
@pytest.mark.parametrize("attn", ["full-coverage", "step-expansion"])
def test_decoding_token_by_token_equals_one_shot(pos, attn):
    """Each new token runs alone against the cached window KV; several windows complete while
    decoding (beacons appended or interleaved on the fly) and the logits stay the one-shot ones."""
    cfg = BeaconConfig(window=16, ratios=[2], inference_ratio=2, pos=pos, attn=attn)
    model = beaconed(cfg)
    randomize_beacon(model, seed=3)
    ids = torch.randint(10, 250, (1, 75), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        one_shot = model(input_ids=ids).logits[0]
        out = model(input_ids=ids[:, :37])
        steps = [out.logits[0]]
        state = out.beacon_state
        for t in range(37, 75):
            out = model(input_ids=ids[:, t : t + 1], beacon_state=state)
            state = out.beacon_state
            steps.append(out.logits[0])
    assert torch.allclose(torch.cat(steps), one_shot, atol=1e-5)


def test_only_beacon_parameters_learn_and_gradients_cross_windows(tmp_path):
    from tune_plugin_beacon import BeaconSettings, tune_adapt_model

    recipe = load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path)))
    ctx = RunContext(recipe=recipe, output_dir=tmp_path)
    model = tune_adapt_model(
        "beacon", BeaconSettings(window=16, ratios=[4], ratio_mix="fixed"), tiny(), ctx
    )
    model.train()
    ids = torch.randint(10, 250, (1, 64), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[:, :48] = -100  # only the last window is scored
    model(input_ids=ids, labels=labels).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("beacon_" in n for n in with_grad)
    early = model.model.layers[0].self_attn.beacon_k_proj.weight.grad
    assert early is not None and float(early.abs().sum()) > 0  # reached through window 0's memory


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = beaconed(BeaconConfig(window=16, ratios=[4], ratio_mix="fixed"))
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append(model.model.layers[0].self_attn.beacon_q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_training_draws_ratios_that_divide_the_window():
    cfg = BeaconConfig(window=24, ratios=[2, 5, 8, 0])
    assert cfg.usable_ratios() == [2, 8, 0]
    model = beaconed(cfg)
    model.train()
    drawn = {model.beacon_rng.choice(cfg.usable_ratios()) for _ in range(50)}
    assert drawn == {0, 2, 8}
    copy.deepcopy(cfg)


@pytest.mark.parametrize("pos", ["interleave", "append"])
@pytest.mark.parametrize(("short", "one_pass"), [(33, False), (49, True)])
def test_a_padded_batch_equals_its_rows_run_alone(monkeypatch, pos, short, one_pass):
    """Rows with as many windows as the longest (49 and 50 tokens: 4 windows of 16) run as one
    pass; a row with fewer windows (33: 3) makes the batch run row by row. Same logits either
    way, in training mode too (the ratios of each window are given, as the trainer draws them)."""
    import tune_plugin_beacon.model as beacon_model

    passes = []
    encode = beacon_model.encode
    monkeypatch.setattr(
        beacon_model, "encode", lambda m, ids, *a: passes.append(len(ids)) or encode(m, ids, *a)
    )
    model = beaconed(BeaconConfig(window=16, ratios=[2, 4, 8], pos=pos))
    randomize_beacon(model, seed=6)
    model.train()
    ratios = [4, 2, 8, 4]
    a = torch.randint(10, 250, (1, 50), generator=torch.Generator().manual_seed(7))
    b = torch.randint(10, 250, (1, short), generator=torch.Generator().manual_seed(8))
    batch = torch.zeros(2, 50, dtype=torch.long)
    batch[0], batch[1, :short] = a[0], b[0]
    mask = torch.zeros(2, 50, dtype=torch.long)
    mask[0], mask[1, :short] = 1, 1
    with torch.no_grad():
        together = model(
            input_ids=batch, attention_mask=mask, labels=batch, num_items_in_batch=1,
            beacon_ratios=ratios,
        )  # fmt: skip
        assert passes == ([2] if one_pass else [1, 1])
        alone_a = model(input_ids=a, labels=a, num_items_in_batch=1, beacon_ratios=ratios)
        alone_b = model(input_ids=b, labels=b, num_items_in_batch=1, beacon_ratios=ratios)
    assert torch.allclose(together.logits[0], alone_a.logits[0], atol=1e-5)
    assert torch.allclose(together.logits[1, :short], alone_b.logits[0], atol=1e-5)
    assert abs(float(together.loss) - float(alone_a.loss + alone_b.loss)) < 1e-4


def test_sink_by_architecture_llama3_gets_one():
    """The authors found Llama-3 needs an attention sink; Llama-2, Mistral and Qwen2 do not."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    assert default_sink_size(LlamaConfig(vocab_size=128_256)) == 1
    assert default_sink_size(LlamaConfig(vocab_size=32_000, rope_scaling={"rope_type": "llama3",
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})) == 1  # fmt: skip
    assert default_sink_size(LlamaConfig(vocab_size=32_000)) == 0
    assert default_sink_size(MistralConfig()) == 0 and default_sink_size(Qwen2Config()) == 0
    assert beaconed(BeaconConfig(window=16)).beacon_config.sink_size == 0  # tiny: 256 tokens
    assert beaconed(BeaconConfig(window=16, sink_size=2)).beacon_config.sink_size == 2


def test_adaptive_ratio_leaves_room_for_generation_and_is_chosen_once():
    """256 positions, window 64: a 300-token prompt fits at ratio 2 alone (150 + 64 + 32 = 246),
    but with 200 tokens to generate needs ratio 4; the choice then holds for every window that
    follows, however long decoding goes on."""
    cfg = BeaconConfig(window=64, ratios=[2, 4, 8, 16], inference_ratio="adapt", sink_size=0)
    model = beaconed(cfg, max_position_embeddings=256)
    prompt = torch.randint(10, 250, (1, 300), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert model(input_ids=prompt, beacon_headroom=0).beacon_state.ratio == 2
        state = model(input_ids=prompt, beacon_headroom=200).beacon_state
        assert state.ratio == 4
        more = torch.randint(10, 250, (1, 600), generator=torch.Generator().manual_seed(10))
        state = model(input_ids=more, beacon_state=state).beacon_state
    assert state.ratio == 4
    assert state.memory_len() == (900 // 64) * 64 // 4  # every window compressed at 4
