"""GGUF files checked in llama.cpp itself (llama-cpp-python, the `llama` extra): k-quants made
by llama.cpp's quantizer, `tune export --verify` / `tune verify`, and artifacts broken on purpose
failing the check that names what is broken. Without llama-cpp-python these tests skip; the
pre-tokenizer, Ollama-template and refusal tests run everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tune.plugin import TuneError
from tune.testing import run_cli, tiny_tokenizer
from tune_plugin_gguf.ollama import derive, go_render, verify_modelfile
from tune_plugin_gguf.pretok import HASH_TEXT, identify, split

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


# -- the pre-tokenizer ---------------------------------------------------------------------------
def _json(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def test_pre_tokenizer_is_identified_as_llama_cpp_does(smol_base):
    """SmolLM2's pre-tokenizer (digits one by one, then GPT-2's byte-level split) is llama.cpp's
    'smollm'; a merge-less vocabulary is 'default' with a note; an unknown split is refused
    (never 'default' in silence), unless -x pre names it."""
    smol = transformers.AutoTokenizer.from_pretrained(str(smol_base))
    found = identify(smol, _json(smol))
    assert (found.name, found.how) == ("smollm", "splits") and "smollm" in found.note
    # llama.cpp's own regexes, as its pre-tokenizer applies them, on the example
    assert split("it's   spaced", [r"\p{N}", r"'s|'t| ?\p{L}+|\s+(?!\S)"]) == [
        "it",
        "'s",
        "  ",
        " spaced",
    ]
    tiny = tiny_tokenizer("tiny-llama")
    found = identify(tiny, _json(tiny))
    assert (found.name, found.how) == ("default", "no merges") and "no merges" in found.note

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    odd = Tokenizer(models.BPE())
    odd.pre_tokenizer = pre_tokenizers.Whitespace()  # no llama.cpp pre-tokenizer splits so
    odd.train_from_iterator(["hello world, it's fine"] * 5, trainers.BpeTrainer(vocab_size=60))
    odd_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=odd)
    with pytest.raises(TuneError, match="-x pre=NAME"):
        identify(odd_tok, _json(odd_tok))
    assert identify(odd_tok, _json(odd_tok), given="gpt-2").name == "gpt-2"
    assert "I've been 'told he's there" in HASH_TEXT  # the reference text llama.cpp hashes


# -- Ollama: the Modelfile's TEMPLATE with Go-template semantics -----------------------------------
def test_ollama_template_renders_the_trained_template_in_go_semantics():
    """The TEMPLATE tune writes, rendered as Go's text/template does, gives the trained chat
    template's text for each conversation (Llama 3, ChatML, Mistral shapes)."""
    conversations = [
        [{"role": "user", "content": "hi {{ .Content }}"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "v"},
        ],
    ]
    for name in ("tiny-llama", "tiny-qwen2", "tiny-mistral"):
        tok = tiny_tokenizer(name)
        template = derive(tok.chat_template, tok.bos_token, tok.eos_token).go_template()
        for messages in conversations:
            try:
                want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # Mistral's template refuses a system turn
                continue
            data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
            assert go_render(template, data) == want
    go = '{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}[{{ .Content }}]{{ end }}{{ end -}}\n'
    assert go_render(go, {"Messages": [{"Role": "user", "Content": "x"}]}) == "[x]"


def test_quant_needing_llama_cpp_is_refused_naming_the_extra(trained, tmp_path):
    """Without llama-cpp-python, --quant q4_k_m is one paragraph naming the extra (exit 2)."""
    shim = tmp_path / "without-llama_cpp"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import importlib.util as u\n_find = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name == 'llama_cpp' else _find(name, *a, **k)\n"
    )
    import os
    import sys

    env = {"PYTHONPATH": os.pathsep.join([str(shim), *(p for p in sys.path if p)])}
    refused = run_cli(
        "export",
        str(trained),
        "--format",
        "gguf",
        "--quant",
        "q4_k_m",
        "--out",
        str(tmp_path / "m.gguf"),
        env=env,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "tune-plugin-gguf[llama]" in refused.stderr.replace("\n", "")
    assert not (tmp_path / "m.gguf").exists()


# -- in llama.cpp ---------------------------------------------------------------------------------
llama = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python (tune-plugin-gguf[llama]) is not installed",
)


def _checks(path: Path, reference) -> dict[str, tuple]:
    from tune_plugin_gguf.verify import verify_gguf

    return {name: (ok, detail) for name, ok, detail in verify_gguf(path, reference)}


@llama
def test_quickstart_exports_and_verifies_in_llama_cpp(trained, tmp_path):
    """`tune export --quant q4_k_m --verify`: llama.cpp's quantizer writes the k-quant, and
    every check passes in llama.cpp (tokens, template, end of turn, logits, greedy)."""
    quant = "q4_k_m"
    out = tmp_path / f"qs-{quant}.gguf"
    result = run_cli(
        "export", str(trained), "--format", "gguf", "--quant", quant, "--out", str(out), "--verify"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified" in result.stdout and "FAIL" not in result.stdout
    for check in ("tokenizer", "chat template", "end of turn", "logits", "greedy"):
        assert check in result.stdout
    import gguf

    types = {t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types & {"Q4_K", "Q5_0", "Q6_K"}, types  # (rows of 128 take llama.cpp's fallbacks)


@llama
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_f16_and_q8_0_greedy_equal_transformers_for_32_tokens(trained, tmp_path, reference, quant):
    """Both run in this llama.cpp build (q8_0 included) with the trained model's logits and
    its greedy continuation of each prompt, 32 tokens."""
    from tune_plugin_gguf.write import write_gguf

    write_gguf(trained / "final", tmp_path / "m.gguf", quant, name="qs")
    checks = _checks(tmp_path / "m.gguf", reference)
    assert all(ok is not False for ok, _ in checks.values()), [
        (k, v) for k, v in checks.items() if v[0] is False
    ]
    n = len(reference.prompts)
    assert checks["greedy"][0] is True and checks["logits"][0] is True
    assert checks["greedy"][1].startswith(f"{n} of {n} prompts identical ({32 * n} of {32 * n}")


def _broken(trained: Path, tmp_path: Path, how: str) -> Path:
    """final/ copied with one thing broken, exported to f16 GGUF."""
    from safetensors.torch import load_file, save_file
    from tune_plugin_gguf.write import write_gguf

    folder = tmp_path / how
    shutil.copytree(trained / "final", folder)
    if how == "wrong eos":  # the tokenizer's eos made an ordinary token: "!"
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["eos_token"] = "!"
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        bang = transformers.AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids("!")
        generation = json.loads((folder / "generation_config.json").read_text())
        generation["eos_token_id"] = bang
        (folder / "generation_config.json").write_text(json.dumps(generation))
    elif how == "swapped tensor":  # two layers' MLP down projections exchanged
        weights = load_file(str(folder / "model.safetensors"))
        a, b = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
        weights[a], weights[b] = weights[b], weights[a]
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif how == "no generation prompt":  # the template ignores add_generation_prompt
        template = (folder / "chat_template.jinja").read_text()
        start = template.index("{%- if add_generation_prompt")
        (folder / "chat_template.jinja").write_text(template[:start])
    write_gguf(folder, tmp_path / f"{how}.gguf", "f16", name="broken")
    return tmp_path / f"{how}.gguf"


@llama
@pytest.mark.parametrize(
    ("how", "check"),
    [
        ("wrong eos", "end of turn"),
        ("swapped tensor", "logits"),
        ("no generation prompt", "chat template"),
    ],
)
def test_broken_artifacts_fail_the_check_that_names_it(trained, tmp_path, reference, how, check):
    path = _broken(trained, tmp_path, how)
    checks = _checks(path, reference)
    assert checks[check][0] is False, checks
    if how == "swapped tensor":
        assert checks["tokenizer"][0] is True  # the rest of the file is right
    if how == "no generation prompt":
        assert checks["logits"][0] is True


@llama
def test_tune_verify_exits_non_zero_naming_the_failed_check(trained, tmp_path):
    path = _broken(trained, tmp_path, "swapped tensor")
    result = run_cli("verify", str(path), "--against", str(trained))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "Traceback" not in result.stderr
    assert "failed verification: logits" in result.stderr.replace("\n", " ")


@llama
def test_ollama_modelfile_is_verified_with_its_gguf(trained, tmp_path, reference):
    out = tmp_path / "ollama"
    result = run_cli(
        "export", str(trained), "--format", "ollama", "--quant", "q8_0", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    checks, gguf = verify_modelfile(out / "Modelfile", reference)
    assert gguf == (out / "run-q8_0.gguf").resolve()
    assert [c[:2] for c in checks] == [("Ollama template", True), ("Ollama stop", True)]
    text = (out / "Modelfile").read_text()
    (out / "Modelfile").write_text(text.replace('PARAMETER stop "<|eot_id|>"\n', ""))
    assert verify_modelfile(out / "Modelfile", reference)[0][1][1] is False
    cut = text.replace(
        "{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}", ""
    )
    assert cut != text
    (out / "Modelfile").write_text(cut)
    assert verify_modelfile(out / "Modelfile", reference)[0][0][1] is False


@llama
@pytest.mark.parametrize("quant", ["q4_k_m", "q8_0"])
def test_lora_merged_smollm2_shaped_model_verifies_in_llama_cpp(smol_merged, tmp_path, quant):
    """A LoRA run on a SmolLM2-135M-shaped model (random init, 2 of its 30 layers), merged in
    bf16 and exported: the pre-tokenizer is llama.cpp's 'smollm' (so "it's   spaced" has the
    trained ids in llama.cpp) and every check passes."""
    from tune_plugin_gguf.write import write_gguf

    folder, reference = smol_merged
    vocab = write_gguf(folder, tmp_path / "m.gguf", quant, name="smol")
    assert vocab.pre == "smollm"
    checks = _checks(tmp_path / "m.gguf", reference)
    assert all(ok is not False for ok, _ in checks.values()), [
        (k, v) for k, v in checks.items() if v[0] is False
    ]
    assert "it's   spaced" in reference.texts and checks["tokenizer"][0] is True
