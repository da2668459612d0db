"""GGUF export checked by transformers' own GGUF loader, and GGUF files as training input.

The exported files are read back with `from_pretrained(folder, gguf_file=...)` (no tune code):
logits within a stated tolerance per quant, the same greedy generations, the same tokens, chat
template and eos. Tune's tiny tokenizer is byte-level BPE, which transformers rebuilds from a
GGUF (`tokenizer.ggml.model = "gpt2"`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.plugin import TuneError
from tune.testing import recipe_dict, run, run_cli, tiny_model, train_losses, write_recipe
from tune_plugin_gguf.convert import check_quant, read_config
from tune_plugin_gguf.ollama import derive
from tune_plugin_gguf.write import write_gguf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# max |logit difference| against the trained fp32 model, per quant (measured: see README.md)
TOLERANCE = {"f32": 0.0, "f16": 5e-3, "q8_0": 5e-2}
PROMPTS = ["reverse hello", "reverse world", "reverse tune"]  # the quickstart's


def _load(folder: Path, gguf_file: str | None = None):
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, **kwargs
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    return model.eval(), tokenizer


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_export_round_trips_through_transformers_gguf_loader(trained, tmp_path, quant):
    final = trained / "final"
    write_gguf(final, tmp_path / f"m-{quant}.gguf", quant, name="qs")
    ref_model, ref_tok = _load(final)
    model, tok = _load(tmp_path, f"m-{quant}.gguf")
    assert tok.chat_template == ref_tok.chat_template
    assert (tok.eos_token, tok.bos_token) == (ref_tok.eos_token, ref_tok.bos_token)
    text = ref_tok.apply_chat_template(
        [{"role": "user", "content": "reverse hello"}], tokenize=False, add_generation_prompt=True
    )
    ids = ref_tok(text, return_tensors="pt").input_ids
    assert torch.equal(tok(text, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        diff = (model(ids).logits - ref_model(ids).logits).abs().max().item()
    assert diff <= TOLERANCE[quant], diff
    for prompt in PROMPTS:
        assert _greedy(model, tok, prompt) == _greedy(ref_model, ref_tok, prompt)


@pytest.mark.parametrize("arch", ["tiny-qwen2", "tiny-mistral"])
def test_qwen2_and_mistral_export_exactly_in_f32(tmp_path, arch):
    folder = tiny_model(arch)
    write_gguf(folder, tmp_path / "m.gguf", "f32", name=arch)
    ref, _ = _load(folder)
    model, _ = _load(tmp_path, "m.gguf")
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_cli_ollama_export_writes_gguf_and_modelfile(trained, tmp_path):
    out = tmp_path / "ollama"
    result = run_cli(
        "export", str(trained), "--format", "ollama", "--quant", "q8_0", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    gguf = out / "run-q8_0.gguf"
    modelfile = (out / "Modelfile").read_text()
    assert gguf.is_file() and f"FROM ./{gguf.name}" in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert "PARAMETER num_ctx 64" in modelfile  # the recipe's max_seq_len
    assert '{{ else if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>' in modelfile
    assert f"ollama create run-q8_0 -f {out / 'Modelfile'}" in modelfile  # not a temporary path
    assert sorted(p.name for p in out.iterdir()) == [".tune-export.json", "Modelfile", gguf.name]


def test_export_targets_a_file_or_names_the_file_in_a_folder(trained, tmp_path):
    from tune.plugin import RunContext
    from tune.testing import load_recipe
    from tune_plugin_gguf import GGUFExporter, GGUFSettings, OllamaExporter, OllamaSettings

    ctx = RunContext(recipe=load_recipe(trained / "recipe.toml"), output_dir=tmp_path)
    gguf = GGUFExporter(GGUFSettings(quant="q8_0"), ctx)
    assert gguf.targets(tmp_path / "m.gguf") == [tmp_path / "m.gguf"]
    assert gguf.targets(tmp_path / "out") == [tmp_path / "out" / "run-q8_0.gguf"]
    named = OllamaExporter(OllamaSettings(name="qs"), ctx)
    assert named.targets(tmp_path / "out") == [
        tmp_path / "out" / "qs-f16.gguf",
        tmp_path / "out" / "Modelfile",
    ]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TuneError, match="not a .gguf"):
        gguf.targets(tmp_path / "notes.txt")
    assert not (tmp_path / "out").exists()  # asked before anything loads: nothing is made


def _export(trained, fmt, out, quant="f16"):
    return run_cli("export", str(trained), "--format", fmt, "--quant", quant, "--out", str(out))


def test_export_never_replaces_a_users_file_and_replaces_its_own(trained, tmp_path):
    """A Modelfile or .gguf tune did not write stops the export (exit 2, named, untouched);
    what an earlier export wrote there (.tune-export.json lists it) is replaced."""
    out = tmp_path / "ollama"
    out.mkdir()
    (out / "Modelfile").write_text("FROM ./mine.gguf\n")
    refused = _export(trained, "ollama", out)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "Modelfile" in refused.stderr and "did not write" in refused.stderr
    assert (out / "Modelfile").read_text() == "FROM ./mine.gguf\n"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile"]  # nothing else written

    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF mine")
    refused = _export(trained, "gguf", mine)
    assert refused.returncode == 2 and "mine.gguf" in refused.stderr.replace("\n", "")
    assert mine.read_bytes() == b"GGUF mine"

    (out / "Modelfile").unlink()
    first = _export(trained, "ollama", out)
    assert first.returncode == 0, first.stderr
    before = (out / "run-f16.gguf").stat().st_mtime_ns
    again = _export(trained, "ollama", out, quant="q8_0")  # another quant: a new file beside
    assert again.returncode == 0, again.stderr
    assert "FROM ./run-q8_0.gguf" in (out / "Modelfile").read_text()
    again = _export(trained, "ollama", out)  # the same export again: its own files replaced
    assert again.returncode == 0, again.stderr
    assert "FROM ./run-f16.gguf" in (out / "Modelfile").read_text()
    assert (out / "run-f16.gguf").stat().st_mtime_ns != before
    assert sorted(p.name for p in out.iterdir()) == [
        ".tune-export.json",
        "Modelfile",
        "run-f16.gguf",
        "run-q8_0.gguf",
    ]


def test_push_dry_run_lists_the_gguf_export(trained):
    """`tune push --export gguf:QUANT` (was --gguf QUANT) stages the GGUF beside the model."""
    out = run_cli("push", str(trained), "me/qs", "--export", "gguf:q8_0", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "run-q8_0.gguf" in out.stdout and "model.safetensors" in out.stdout
    assert ".tune-export.json" not in out.stdout
    refused = run_cli("push", str(trained), "me/qs", "--export", "gguf:q9_9", "--dry-run")
    assert refused.returncode == 2 and "q9_9" in refused.stderr


def test_template_pieces_reproduce_each_shipped_chat_template():
    from tune.testing import tiny_tokenizer

    for name, start in (("tiny-llama", "<|begin_of_text|>"), ("tiny-qwen2", "")):
        tok = tiny_tokenizer(name)
        pieces = derive(tok.chat_template, tok.bos_token, tok.eos_token)
        assert pieces is not None and pieces.start == start
    # a template of another shape gets no TEMPLATE rather than a wrong one
    assert derive("{{ messages[0]['content'] | upper }}", "", "") is None


def test_bad_quant_and_architecture_are_refused_with_the_fix(tmp_path):
    with pytest.raises(TuneError, match="f32, f16, bf16, q8_0"):
        check_quant("q9_9", "--quant")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    with pytest.raises(TuneError, match="supported: llama, mistral, qwen2"):
        read_config(tmp_path)


def test_a_gguf_file_trains_like_its_safetensors(trained, tmp_path):
    """[model] path = "m.gguf": the first step's loss equals the same weights' from safetensors."""
    write_gguf(trained / "final", tmp_path / "m.gguf", "f32", name="qs")
    losses = {}
    for name, path in (("st", str(trained / "final")), ("gguf", "m.gguf")):
        data = recipe_dict(
            tmp_path,
            model={"path": path},
            data={"shuffle": False},
            train={"max_steps": 2, "output_dir": str(tmp_path / name)},
        )
        run(write_recipe(tmp_path, data, f"{name}.toml"))
        losses[name] = train_losses(tmp_path / name)
    assert losses["gguf"][0] == pytest.approx(losses["st"][0], abs=1e-5)
    assert losses["gguf"] == pytest.approx(losses["st"], abs=1e-4)


def test_sentencepiece_style_vocabulary_round_trips(tmp_path):
    """Llama 2 / Mistral v0.x tokenizers: BPE with byte fallback becomes `tokenizer.ggml.model =
    "llama"`, with byte tokens typed as bytes; transformers rebuilds the same tokenization."""
    import shutil

    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_model("tiny-llama") / name, folder / name)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for piece in ("\u2581", "h", "e", "l", "o", "\u2581h", "ll"):  # 266 tokens: the model's vocab
        vocab[piece] = len(vocab)
    bpe = Tokenizer(
        models.BPE(vocab, [("\u2581", "h"), ("l", "l")], byte_fallback=True, unk_token="<unk>")
    )
    bpe.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    ref.save_pretrained(folder)
    write_gguf(folder, tmp_path / "m.gguf", "f16", name="spm")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    # (text starting with a space differs: transformers rebuilds the non-legacy Llama tokenizer)
    for text in ("hello", "hello hello", "h\u00e9 llo \U0001f642"):
        assert tok(text).input_ids == ref(text).input_ids
    assert tok.decode(tok("h\u00e9 llo").input_ids, skip_special_tokens=True) == "h\u00e9 llo"


def test_qwen3_moe_exports_exactly_in_f32(tmp_path):
    """Fused experts split into llama.cpp's gate/up/down expert stacks and the router: read
    back by transformers' GGUF loader, the logits are the model's own."""
    folder = tiny_model("tiny-qwen3-moe")
    write_gguf(folder, tmp_path / "m.gguf", "f32", name="moe")
    ref, _ = _load(folder)
    # transformers' GGUF reader does not map qwen3moe.expert_feed_forward_length (llama.cpp
    # reads it) to moe_intermediate_size: given here, as llama.cpp takes it from the file
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32, moe_intermediate_size=128
    ).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_mixtral_expert_stacks_hold_the_experts_in_llama_cpp_layout(tmp_path):
    """Mixtral is a llama with experts to llama.cpp (transformers cannot read it back): the
    file's expert stacks are [experts, out, in] with gate and up apart, the router in F32."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    folder = tiny_model("tiny-mixtral")
    write_gguf(folder, tmp_path / "m.gguf", "f32", name="moe")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(str(folder / "model.safetensors"))
    fused = weights["model.layers.1.mlp.experts.gate_up_proj"].numpy()
    width = fused.shape[1] // 2
    assert np.array_equal(tensors["blk.1.ffn_gate_exps.weight"].data, fused[:, :width])
    assert np.array_equal(tensors["blk.1.ffn_up_exps.weight"].data, fused[:, width:])
    down = weights["model.layers.1.mlp.experts.down_proj"].numpy()
    assert np.array_equal(tensors["blk.1.ffn_down_exps.weight"].data, down)
    assert tensors["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    field = reader.fields["llama.expert_count"]
    assert int(field.parts[field.data[0]][0]) == 4


@pytest.mark.parametrize("arch", ["tiny-qwen3-moe", "tiny-mixtral"])
def test_moe_exports_run_in_llama_cpp_as_in_transformers(tmp_path, arch):
    """In llama.cpp itself (llama-cpp-python, when installed: it builds llama.cpp from source),
    the f32 MoE file's logits equal transformers' to llama.cpp's float32 precision."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    folder = tiny_model(arch)
    write_gguf(folder, tmp_path / "m.gguf", "f32", name=arch)
    ref, _ = _load(folder)
    ids = list(range(40, 72))
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, verbose=False
    )
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    assert float(np.abs(got - want).max()) <= 1e-3
    assert (got.argmax(-1) == want.argmax(-1)).all()
