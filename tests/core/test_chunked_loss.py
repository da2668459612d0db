"""The chunked loss equals the plain loss, and never builds the full logits."""

from __future__ import annotations

import pytest
from tune.testing import final_weights, max_weight_diff, tiny_model, train_losses

torch = pytest.importorskip("torch")

B, T, VOCAB = 2, 128, 2048  # logits: 2 x 128 x 2048 > the 2048 x 128 head weight


def _model(tie_word_embeddings: bool = True):
    """tiny-llama's config with a larger vocabulary, so the logits are the largest tensor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model("tiny-llama"))
    config.vocab_size, config.tie_word_embeddings = VOCAB, tie_word_embeddings
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _batch(packed: bool = False):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (B, T), generator=gen)
    labels = ids.clone()
    labels[0, :20] = -100  # a prompt
    labels[1, 100:] = -100  # padding
    inputs = {"input_ids": ids}
    if packed:  # two examples per row; the first token of each has no target
        pos = torch.cat([torch.arange(50), torch.arange(T - 50)]).repeat(B, 1)
        labels[:, 50] = -100
        inputs["position_ids"] = pos
    return inputs, labels


def _loss_and_grads(model, chunked: bool, packed: bool = False):
    from tune.train.chunked_loss import forward_nll, plain_nll

    model.zero_grad()
    inputs, labels = _batch(packed)
    n = int((labels[:, 1:] != -100).sum())
    if chunked:
        loss, _ = forward_nll(model, inputs, labels, reduce=True, rows=13)
    else:
        loss = model(**inputs, labels=labels, num_items_in_batch=1, use_cache=False).loss
        assert torch.allclose(
            loss, plain_nll(model(**inputs, use_cache=False).logits, labels, True)
        )
    (loss / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()) / n, grads


def _lora(model, targets):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    model = get_peft_model(model, cfg)
    for name, param in model.named_parameters():  # B != 0, so the LoRA path really counts
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


@pytest.mark.parametrize(
    "case", ["tied", "untied", "packed", "lora_frozen_head", "lora_on_lm_head", "lora_tied_lm_head"]
)
def test_chunked_loss_and_gradients_equal_the_plain_ones(case):
    from tune.train.chunked_loss import plain_reason

    model = _model(tie_word_embeddings=case not in ("untied", "lora_on_lm_head"))
    if case.startswith("lora"):  # the head frozen and bare, or LoRA-wrapped
        model = _lora(model, ["q_proj", "v_proj"] + (["lm_head"] if "lm_head" in case else []))
    assert plain_reason(model) is None
    packed = case == "packed"
    plain, g_plain = _loss_and_grads(model, chunked=False, packed=packed)
    chunked, g_chunked = _loss_and_grads(model, chunked=True, packed=packed)
    assert abs(plain - chunked) < 1e-5
    assert g_plain.keys() == g_chunked.keys() and g_plain
    assert max_weight_diff(g_plain, g_chunked) < 1e-5
    if "lm_head" in case:
        assert any("lm_head" in k and "lora" in k for k in g_chunked)


def _largest_tensor(fn) -> int:
    """The most elements any op produced while `fn` ran (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    with Largest():
        fn()
    return Largest.largest


def test_the_full_logits_never_exist():
    model = _model()
    full = B * T * VOCAB
    assert _largest_tensor(lambda: _loss_and_grads(model, chunked=False)) >= full
    assert _largest_tensor(lambda: _loss_and_grads(model, chunked=True)) <= full // 2


def test_token_logprobs_helper_matches_the_logits_and_runs_without_grad():
    from tune.train.chunked_loss import token_logprobs

    model = _model()
    inputs, labels = _batch()
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    want = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    want = want * (targets != -100)
    with torch.no_grad():
        got = token_logprobs(model, inputs, labels)
        plain = token_logprobs(model, inputs, labels, chunked=False)
    assert got.shape == (B, T - 1)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(plain, want, atol=1e-5)


def test_models_where_chunking_is_not_exact_use_the_plain_loss():
    from tune.train.chunked_loss import plain_reason

    capped = _model()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in plain_reason(capped)
    patched = _model()
    patched.forward = lambda *a, **k: None  # what beacon does
    assert "replaced" in plain_reason(patched)
    assert "not one known" in plain_reason(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("adapt", [None, "lora_on_lm_head"])
def test_whole_runs_with_packing_and_accumulation_equal_chunked_on_and_off(
    tmp_path, run_recipe, capsys, adapt
):
    from tune.testing import recipe_dict

    extra = {}
    if adapt:
        extra["adapt"] = [{"method": "lora", "r": 4, "targets": ["q_proj", "lm_head"]}]
    runs = []
    for chunked in (True, False):
        recipe = recipe_dict(
            tmp_path,
            n_rows=32,
            data={"pack": True},
            train={
                "output_dir": str(tmp_path / f"run-{chunked}"),
                "max_steps": 3,
                "micro_batch_size": 2,
                "grad_accum": 2,
                "chunked_loss": chunked,
            },
            **extra,
        )
        run_recipe(recipe, name=f"r{chunked}.toml")
        runs.append(tmp_path / f"run-{chunked}")
    said = capsys.readouterr().out
    assert "loss: chunked" in said and "loss: plain ([train] chunked_loss = false)" in said
    on, off = (train_losses(r) for r in runs)
    assert len(on) == 3 and max(abs(a - b) for a, b in zip(on, off, strict=True)) < 1e-5
    # A bare head takes its gradient in forward, before the loss's 1/tokens scale (autograd
    # scales first): float32 rounding apart, which AdamW's normalization magnifies in the
    # near-zero gradients of a full fine-tune's embedding rows. The gradients themselves are
    # compared directly in test_chunked_loss_and_gradients_equal_the_plain_ones.
    assert max_weight_diff(final_weights(runs[0]), final_weights(runs[1])) < (
        1e-5 if adapt else 1e-4
    )
