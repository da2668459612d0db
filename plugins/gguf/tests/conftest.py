"""Runs shared by the GGUF tests (session-wide: each is trained once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.testing import (
    SMOLLM2_135M,
    VERIFY_CONVERSATIONS,
    chat_rows,
    recipe_dict,
    run,
    save_random_llama,
    write_recipe,
)

ENGLISH = (
    "It's a truth universally acknowledged that we'll train models, they've shipped them, "
    "and I'm sure you'd like 12 of 345 numbers split digit by digit. Don't worry: it's fine.\n"
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A quickstart-like full fine-tune of the tiny Llama, a few steps on CPU."""
    tmp = tmp_path_factory.mktemp("qs")
    data = recipe_dict(tmp, train={"max_steps": 6, "output_dir": str(tmp / "run")})
    data["optimizer"]["lr"] = 3e-3
    run(write_recipe(tmp, data))
    return tmp / "run"


def smollm2_shaped(target: Path, layers: int = 2) -> Path:
    """A random-init Llama of SmolLM2-135M's shape (`layers` of its 30) with a tokenizer built
    like SmolLM2's: byte-level BPE whose pre-tokenizer splits digits one by one, ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from tune.plugin import chat

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    texts = [m["content"] for r in chat_rows(64) for m in r["messages"]] + [ENGLISH] * 20
    core.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat.TEMPLATES["chatml"]["template"],
    )
    return save_random_llama(target, {**SMOLLM2_135M, "num_hidden_layers": layers}, tokenizer)


@pytest.fixture(scope="session")
def smol_base(tmp_path_factory) -> Path:
    """The SmolLM2-135M-shaped model folder (see smollm2_shaped)."""
    return smollm2_shaped(tmp_path_factory.mktemp("smol-base") / "model")


@pytest.fixture(scope="session")
def smol_lora(tmp_path_factory, smol_base) -> Path:
    """A LoRA run (2 steps) on the SmolLM2-135M-shaped model, on chat rows in ChatML."""
    tmp = tmp_path_factory.mktemp("smol")
    base = smol_base
    data = recipe_dict(
        tmp,
        model={"path": str(base), "max_seq_len": 64},
        data={"template": "chatml"},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        train={"max_steps": 2, "output_dir": str(tmp / "run")},
    )
    run(write_recipe(tmp, data))
    return tmp / "run"


PROBES = ["it's   spaced", "I'll say: we're sure they've DON'T   x", "12345 + 678 = 13023"]


class TransformersReference:
    """What `tune verify` hands an exporter's `verify` (the trained model and the run's prompts),
    built here from transformers and the run's examples (`tune.testing.tokenize`) alone, so the
    plugin's checks are tested against the library itself."""

    def __init__(self, folder: Path, run_dir: Path, n_prompts: int = 4, new_tokens: int = 32):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from tune.testing import load_recipe, tokenize

        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.tokenizer = tok = AutoTokenizer.from_pretrained(str(folder))
        self.new_tokens, self._greedy = new_tokens, {}
        self.prompts, self.texts = [], []
        for example in tokenize(load_recipe(run_dir / "recipe.toml")).train[: 2 * n_prompts]:
            ids, labels = list(example["input_ids"]), list(example["labels"])
            first = next(i for i, label in enumerate(labels) if label != -100)
            if len(self.prompts) < n_prompts:
                self.prompts.append(ids[:first])
            self.texts.append(tok.decode(ids, skip_special_tokens=False))
        self.texts += PROBES
        self.conversations = VERIFY_CONVERSATIONS
        mark = "\u2063REPLY\u2063"
        turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}]
        after = tok.apply_chat_template(turn, tokenize=False).split(mark)[1]
        special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
        self.turn_end = next(
            i for i in tok(after, add_special_tokens=False).input_ids if i in special
        )
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = list(dict.fromkeys([*eos, tok.eos_token_id, self.turn_end]))

    def logits(self, ids):
        import torch

        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids])).logits[0].numpy()

    def greedy(self, ids):
        """`new_tokens` argmax tokens, not stopped at a stop token (as tune's reference)."""
        import torch

        if tuple(ids) not in self._greedy:
            out: list[int] = []
            with torch.no_grad():
                step = self.model(input_ids=torch.tensor([ids]), use_cache=True)
                for _ in range(self.new_tokens):
                    out.append(int(step.logits[0, -1].argmax()))
                    step = self.model(
                        input_ids=torch.tensor([out[-1:]]),
                        past_key_values=step.past_key_values,
                        use_cache=True,
                    )
            self._greedy[tuple(ids)] = out
        return self._greedy[tuple(ids)]

    def chat_text(self, messages):
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def chat_ids(self, messages):
        return self.tokenizer(self.chat_text(messages), add_special_tokens=False).input_ids

    def encode(self, text):
        return self.tokenizer(text).input_ids


@pytest.fixture(scope="session")
def reference(trained) -> TransformersReference:
    return TransformersReference(trained / "final", trained)


@pytest.fixture(scope="session")
def smol_merged(smol_lora, tmp_path_factory):
    """The SmolLM2-shaped LoRA run merged by PEFT itself (bf16, as `tune export` merges), and
    its reference."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = smol_lora / "final"
    base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    folder = tmp_path_factory.mktemp("smol-merged")
    merged.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(final)).save_pretrained(folder)
    return folder, TransformersReference(folder, smol_lora, new_tokens=12)
