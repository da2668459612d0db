"""Bad input of every kind is one paragraph and exit code 2, or says what it did: never a
traceback, never a silent surprise."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from tune.testing import recipe_dict, tiny_model, write_jsonl, write_recipe

from tests.security.conftest import cli, one_paragraph


def _refused(capsys, *args: str, expect: str = "") -> str:
    code, text = cli(capsys, *args)
    assert code == 2 and one_paragraph(text), text
    assert expect in text, text
    return text


# -- recipes -------------------------------------------------------------------------------------
def test_utf16_and_latin1_recipes_are_named_and_a_bom_is_read(tmp_path, capsys):
    data = recipe_dict(tmp_path, train={"max_steps": 1})
    path = write_recipe(tmp_path, data)
    text = path.read_text(encoding="utf-8")
    path.write_bytes(text.encode("utf-16"))
    _refused(capsys, "validate", str(path), expect="UTF-16")
    path.write_bytes(("# café\n" + text).encode("latin-1"))
    _refused(capsys, "validate", str(path), expect="not UTF-8")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    code, out = cli(capsys, "validate", str(path))
    assert code == 0, out


def test_deeply_nested_recipes_and_overrides_are_refused(tmp_path, capsys):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(capsys, "validate", str(path), expect="nested")
    header = ".".join(["t"] * 5000)
    path.write_text(f"[{header}]\nv = 1\n")
    _refused(capsys, "validate", str(path), expect="nested")
    good = write_recipe(tmp_path, recipe_dict(tmp_path))
    _refused(capsys, "validate", str(good), "-o", "x=" + "[" * 5000 + "]" * 5000,
             expect="nested")  # fmt: skip
    _refused(capsys, "validate", str(good), "-o", ".".join(["a"] * 5000) + "=1", expect="-o")


@pytest.mark.parametrize(
    "override,expect",
    [
        ("optimizer.lr=inf", "lr"),
        ("optimizer.lr=nan", "lr"),
        ("train.seed=-1", "seed"),
        ("train.seed=100000000000000000000", "seed"),
    ],
)
def test_numbers_out_of_range_are_refused_at_validation(tmp_path, capsys, override, expect):
    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    _refused(capsys, "validate", str(path), "-o", override, expect=expect)


def test_max_seq_len_beyond_the_models_positions_needs_a_way_to_get_there(tmp_path, capsys):
    path = write_recipe(tmp_path, recipe_dict(tmp_path, model={"max_seq_len": 10**9}))
    _refused(capsys, "validate", str(path), expect="positions")


# -- data rows -----------------------------------------------------------------------------------
def _with_rows(tmp_path: Path, lines: list[str]) -> Path:
    """A recipe whose data is 8 good rows, then `lines` (so the bad one is line 9)."""
    data = recipe_dict(tmp_path)
    good = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good + lines) + "\n", encoding="utf-8")
    data["data"]["train"] = str(bad)
    return write_recipe(tmp_path, data)


@pytest.mark.parametrize(
    "line,expect",
    [
        ('{"messages": [{"role": "user", "content": "a\\ud800"}]}', "surrogate"),
        ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"messages": [], "n": ' + "9" * 5000 + "}", "unreadable JSON value"),
    ],
    ids=["lone-surrogate", "deep-json", "huge-integer"],
)
def test_hostile_rows_are_named_at_validation(tmp_path, capsys, line, expect):
    path = _with_rows(tmp_path, [line])
    text = _refused(capsys, "validate", str(path), expect=expect)
    assert "bad.jsonl:9" in text


def test_a_data_file_linked_to_a_device_is_refused(tmp_path, capsys):
    data = recipe_dict(tmp_path)
    link = tmp_path / "zero.jsonl"
    link.symlink_to("/dev/zero")
    data["data"]["train"] = str(link)
    _refused(capsys, "validate", str(write_recipe(tmp_path, data)), expect="not a regular file")


def test_a_bom_in_a_data_file_is_read(tmp_path, capsys):
    data = recipe_dict(tmp_path)
    train = Path(data["data"]["train"])
    train.write_bytes(b"\xef\xbb\xbf" + train.read_bytes())
    code, text = cli(capsys, "validate", str(write_recipe(tmp_path, data)))
    assert code == 0, text


def test_rows_all_far_too_long_are_said_to_be_too_long_not_empty(tmp_path, capsys):
    data = recipe_dict(tmp_path)
    turns = [{"role": "user", "content": "x" * 70_000}, {"role": "assistant", "content": "y"}]
    write_jsonl(Path(data["data"]["train"]), [{"messages": turns}] * 2)
    text = _refused(capsys, "validate", str(write_recipe(tmp_path, data)))
    assert "far more text than max_seq_len" in text and "empty" not in text


def test_preview_tokenizes_only_the_rows_it_shows(tmp_path, capsys, monkeypatch):
    import tune.data.pipeline as pipeline

    encoded = []
    real = pipeline.encode_records

    def counting(fmt, records):
        encoded.extend(records)
        return real(fmt, records)

    monkeypatch.setattr(pipeline, "encode_records", counting)
    path = write_recipe(tmp_path, recipe_dict(tmp_path, data={"cache": False}))
    code, text = cli(capsys, "data", "preview", str(path), "-n", "2")
    assert code == 0 and "example 2" in text, text
    assert len(encoded) == 2  # of 64 rows


# -- model files ---------------------------------------------------------------------------------
def _model_copy(tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model("tiny-llama"), folder)
    return folder


def _header(path: Path) -> tuple[int, dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return length, json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _huge_length(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**15) + raw[8:])


def _offsets_past_end(path: Path) -> None:
    _, header, body = _header(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    _write(path, header, body)


def _lying_shape(path: Path) -> None:
    _, header, body = _header(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    _write(path, header, body)


def _bad_json(path: Path) -> None:
    length, _, body = _header(path)
    path.write_bytes(struct.pack("<Q", length) + b"{" * length + body)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage", [_huge_length, _offsets_past_end, _lying_shape, _bad_json, _truncated],
    ids=lambda f: f.__name__.strip("_"),
)  # fmt: skip
def test_corrupt_safetensors_are_one_paragraph(tmp_path, capsys, damage):
    folder = _model_copy(tmp_path)
    damage(folder / "model.safetensors")
    data = recipe_dict(tmp_path, model={"path": str(folder)}, train={"max_steps": 1})
    _refused(capsys, "validate", str(write_recipe(tmp_path, data)), expect="model.safetensors")


@pytest.mark.parametrize(
    "text", ['{"version": "1.0", "trunc', "[1, 2]"], ids=["truncated", "not-an-object"]
)
def test_a_damaged_tokenizer_is_one_paragraph(tmp_path, capsys, text):
    folder = _model_copy(tmp_path)
    (folder / "tokenizer.json").write_text(text)
    data = recipe_dict(tmp_path, model={"path": str(folder)}, train={"max_steps": 1})
    _refused(capsys, "run", str(write_recipe(tmp_path, data)), expect="tokenizer.json")


@pytest.mark.parametrize("key,value", [("hidden_size", -128), ("num_hidden_layers", None)])
def test_impossible_config_sizes_are_refused_by_validate_run_and_estimate(
    tmp_path, capsys, key, value
):
    folder = _model_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    data = recipe_dict(tmp_path, model={"path": str(folder)}, train={"max_steps": 1})
    path = str(write_recipe(tmp_path, data))
    _refused(capsys, "validate", path, expect=key)
    _refused(capsys, "estimate", path, expect=key)


def test_estimate_refuses_a_zero_gpu_memory(tmp_path, capsys):
    path = str(write_recipe(tmp_path, recipe_dict(tmp_path)))
    _refused(capsys, "estimate", path, "--gpu-memory", "0GB", expect="--gpu-memory")


def test_a_corrupt_gguf_is_refused_at_validation_and_at_load(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 8), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = recipe_dict(tmp_path, model={"path": str(path)}, train={"max_steps": 1})
    recipe = str(write_recipe(tmp_path, data))
    _refused(capsys, "run", recipe, expect="GGUF")  # tensors that disagree with the metadata
    path.write_bytes(path.read_bytes()[:64])  # cut short
    _refused(capsys, "validate", recipe, expect="m.gguf")


def test_a_truncated_adapter_or_model_in_final_is_one_paragraph(victim_run, tmp_path, capsys):
    out, _ = victim_run
    weights = out / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _refused(capsys, "chat", str(out), "--prompt", "hi", expect="model.safetensors")
    _refused(capsys, "merge", str(out), "--out", str(tmp_path / "m"), expect="")
    _refused(capsys, "eval", str(out), "--metric", "perplexity", expect="model.safetensors")


def test_a_manifest_that_is_not_a_manifest_is_reported_not_a_traceback(victim_run, capsys):
    out, recipe = victim_run
    (out / "checkpoints" / "step-4" / "manifest.json").write_text("[]")
    (out / "checkpoints" / "step-2" / "manifest.json").write_text('{"files": {"x": 1}}')
    _refused(capsys, "run", str(recipe), "--resume", expect="manifest.json is unreadable")


def test_quantization_library_warnings_stay_out_of_a_run_that_uses_none(tmp_path):
    from tune.testing import run_cli

    data = recipe_dict(tmp_path, train={"max_steps": 1})
    res = run_cli("run", str(write_recipe(tmp_path, data)))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gemm_4bit_forward" not in res.stdout + res.stderr


def test_export_never_overwrites_a_users_file(victim_run, tmp_path, capsys, tune_plugin):
    from tune.plugin import Exporter, hookimpl

    class Copy(Exporter):
        def write(self, model_dir, files):
            files[0].write_text("exported")

    class Plugin:
        @hookimpl
        def tune_provide(self, provide):
            provide.exporter("copy", build=Copy)

    tune_plugin(Plugin(), "copy")
    from tune.testing import plugin_manager
    from tune.trained.export import export

    out, _ = victim_run
    target = tmp_path / "model.bin"
    target.write_text("the user's")
    from tune.errors import TuneError

    with pytest.raises(TuneError, match="tune did not write it"):
        export(out, "copy", target, plugin_manager())
    assert target.read_text() == "the user's"
    fresh = tmp_path / "fresh.bin"
    export(out, "copy", fresh, plugin_manager())
    export(out, "copy", fresh, plugin_manager())  # tune's own export may be replaced
    assert fresh.read_text() == "exported"
