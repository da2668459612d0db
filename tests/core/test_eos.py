"""End of turn: a named template makes its end-of-turn token the saved eos, so a trained model
stops in plain transformers `generate` even when the base model's eos is another token."""

from __future__ import annotations

import json
import shutil

from tune.testing import recipe_dict, tiny_model, write_jsonl

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"say ok {i}"},
            {"role": "assistant", "content": "ok"},
        ]
    }
    for i in range(16)
]


def test_chatml_on_a_base_with_another_eos_stops_at_im_end(tmp_path, run_recipe):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_model("tiny-llama"), base)  # eos <|end_of_text|>, template llama-3.1
    gen = json.loads((base / "generation_config.json").read_text())
    base_tok = AutoTokenizer.from_pretrained(str(base))
    gen["eos_token_id"] = base_tok.eos_token_id  # the base stops only at <|end_of_text|>
    (base / "generation_config.json").write_text(json.dumps(gen))

    data = recipe_dict(tmp_path, model={"path": str(base), "max_seq_len": 64})
    data["data"] = {
        "format": "chat",
        "train": str(write_jsonl(tmp_path / "ok.jsonl", ROWS)),
        "template": "chatml",
    }
    data["optimizer"]["lr"] = 3e-3
    data["train"].update(max_steps=40, micro_batch_size=8)
    run_recipe(data)

    final = tmp_path / "run" / "final"
    tok = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == [base_tok.eos_token_id, im_end]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "say ok 3"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=30, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert new[-1] == im_end and len(new) < 30, tok.decode(new)
    assert tok.decode(new) == "ok<|im_end|>"
