"""Model files checked before a library reads them: a damaged or hostile file is one paragraph
naming it, never a traceback from deep inside a loader (or a process killed for memory).

- `check_config`: config.json's sizes are positive integers;
- `check_safetensors`: every header is sane (length within the file, JSON, known dtypes,
  shapes and offsets that agree with each other and with the file's size);
- `check_tokenizer_files`: tokenizer.json / tokenizer_config.json are readable JSON;
- `check_folder`: all of the above for a model or adapter folder.
Headers only: cheap even for a large model. Imports no torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.model.rope import rope_scaling_parameters  # also on tune.plugin.model_files

# Sizes a decoder config must give as positive integers (where it gives them at all).
SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
)
ELEMENT_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1, "F4": 1,
}  # fmt: skip
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def check_config(config: dict[str, Any], where: str) -> None:
    """The sizes of a model config are positive integers (or absent)."""
    if not isinstance(config, dict):
        raise TuneError("config.json is not a JSON object.", where=where, fix=_REPLACE)
    sections = [config] + [
        v for k, v in config.items() if k.endswith("_config") and isinstance(v, dict)
    ]
    for section in sections:
        for key in SIZE_KEYS:
            if key not in section:
                continue
            value = section[key]
            if value is None and key in ("head_dim", "num_key_value_heads"):
                continue  # transformers derives these
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TuneError(
                    f"config.json says {key} = {json.dumps(value)}, which is not a positive "
                    "integer.",
                    where=where,
                    fix=_REPLACE,
                )


def read_config(folder: Path) -> dict[str, Any] | None:
    """config.json of a local folder, checked; None when there is none."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TuneError(
            f"config.json is not valid JSON ({str(exc).splitlines()[0]}).",
            where=str(path),
            fix=_REPLACE,
        ) from None
    check_config(config, str(path))
    return config


def check_safetensors(path: Path) -> None:
    """One safetensors file: header and tensor table consistent with the file."""
    size = path.stat().st_size
    where = str(path)
    if size < 8:
        raise _damaged(path, f"{size} bytes: shorter than a safetensors header")
    with path.open("rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        if length > MAX_HEADER or 8 + length > size:
            raise _damaged(path, f"its header claims {length:,} bytes, the file has {size:,}")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _damaged(path, f"tensor '{name}' has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in ELEMENT_BYTES:
            raise _damaged(path, f"tensor '{name}' has an unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(_natural(d) for d in shape)):
            raise _damaged(path, f"tensor '{name}' has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))):
            raise _damaged(path, f"tensor '{name}' has malformed offsets {offsets!r}")
        begin, end = offsets
        if not begin <= end <= data:
            raise _damaged(
                path, f"tensor '{name}' lies at bytes {begin:,}-{end:,}, past the end ({data:,})"
            )
        want = math.prod(shape) * ELEMENT_BYTES[dtype]
        if dtype != "F4" and end - begin != want:
            raise _damaged(
                path,
                f"tensor '{name}' of shape {shape} ({dtype}) needs {want:,} bytes, "
                f"its offsets give {end - begin:,}",
            )
    del where


def check_tokenizer_files(folder: Path) -> None:
    """tokenizer.json and tokenizer_config.json, where present, are readable JSON objects."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise TuneError(
                f"{name} is damaged: not valid JSON ({str(exc).splitlines()[0]}).",
                where=str(path),
                fix="replace the tokenizer files with intact copies (download them again, or copy "
                "them from the base model).",
            ) from None
        if not isinstance(body, dict):
            raise TuneError(
                f"{name} is damaged: not a JSON object.",
                where=str(path),
                fix="replace the tokenizer files with intact copies.",
            )


def check_folder(folder: Path) -> None:
    """Every file of a local model or adapter folder that a loader would read first."""
    if not folder.is_dir():
        return
    read_config(folder)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
    check_tokenizer_files(folder)


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _damaged(path: Path, why: str) -> TuneError:
    return TuneError(
        f"{path.name} is damaged or not a safetensors file: {why}.",
        where=str(path),
        fix="replace it with an intact copy (download it again, or take it from the run's "
        "last checkpoint); tune reads nothing from a damaged weights file.",
    )


_REPLACE = "replace config.json with the model's original (download it again)."


def check_positions(
    recipe: Any, positions: Any, where: str, config: dict[str, Any] | None = None
) -> None:
    """[model] max_seq_len within the model's positions, unless the recipe says how it goes
    beyond them: an adapter that extends positions (beacon), a `[model] rope_scaling` (checked
    here against `config`, reaching original x factor positions), or a RoPE scaling the loader
    applies (`config_overrides` with rope_scaling or max_position_embeddings)."""
    if not isinstance(positions, int) or positions <= 0:
        return
    wanted = recipe.model.max_seq_len
    spec = getattr(recipe.model, "rope_scaling", None)
    if spec is not None:
        known = {"max_position_embeddings": positions, **(config or {})}
        _, reach = rope_scaling_parameters(spec, known, str(recipe.path))
        if reach is not None and wanted > reach:
            raise TuneError(
                f"max_seq_len = {wanted:,} is beyond the {reach:,} positions that rope_scaling "
                f"reaches (the model's original positions x factor {spec.get('factor')}).",
                where=f"{recipe.path}: [model] max_seq_len",
                fix=f"use max_seq_len <= {reach:,}, or a larger factor in [model] rope_scaling.",
            )
        return
    if wanted <= positions:
        return
    adapters = recipe.backends.get("adapt", [])
    if any(sel.capabilities.extends_positions for sel in adapters):
        return
    loader = recipe.backends.get("loader")
    overrides = getattr(getattr(loader, "settings", None), "config_overrides", None) or {}
    if "rope_scaling" in overrides or "max_position_embeddings" in overrides:
        return
    raise TuneError(
        f"max_seq_len = {wanted:,} is beyond the model's {positions:,} positions "
        "(max_position_embeddings): it would train on positions the model has never seen, "
        "and lift the bound that keeps giant rows out of the tokenizer.",
        where=f"{recipe.path}: [model] max_seq_len",
        fix=f"use max_seq_len <= {positions:,}; or extend the positions on purpose: a RoPE "
        f'scaling (e.g. rope_scaling = {{ type = "yarn", factor = {_factor(wanted, positions)} }} '
        "in [model]) or an adapter that compresses context (beacon).",
    )


def _factor(wanted: int, positions: int) -> str:
    """The smallest power-of-two factor that reaches `wanted` positions, as TOML."""
    factor = 2.0
    while positions * factor < wanted and factor < 1024:
        factor *= 2
    return f"{factor:.1f}"


def validate_model(recipe: Any) -> None:
    """At validation, before anything loads: a local model folder's files are sane, a local
    GGUF is readable, and max_seq_len fits the model's positions where the config is here."""
    model = recipe.model
    path = str(model.path)
    if getattr(model, "rope_scaling", None) is not None:  # what needs no config, for hub ids
        rope_scaling_parameters(model.rope_scaling, None, str(recipe.path))
    if path.startswith("tune:"):
        from tune.builtin.tiny import BASE_CONFIG

        check_positions(recipe, BASE_CONFIG.get("max_position_embeddings"), path, BASE_CONFIG)
        return
    local = _local(path, recipe.path)
    if local is None:
        return  # a hub id: checked when it is downloaded
    gguf = local if local.is_file() and local.suffix == ".gguf" else None
    if gguf is None and getattr(model, "gguf_file", None) and local.is_dir():
        gguf = local / model.gguf_file if (local / model.gguf_file).is_file() else None
    if gguf is not None:
        check_gguf(gguf, f"{recipe.path}: [model] path")
        return
    if local.is_dir():
        check_folder(local)
        config = read_config(local) or {}
        check_positions(recipe, config.get("max_position_embeddings"), str(local), config)


def check_gguf(path: Path, where: str) -> None:
    """A GGUF file whose header, metadata and tensor table read back, tensors within the file."""
    try:
        from gguf import GGUFReader
    except ImportError:  # the loader says what to install when it needs it
        return
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise ValueError(f"tensor {tensor.name} lies past the end of the file")
    except Exception as exc:  # the reader raises struct, value and index errors alike
        text = str(exc).strip().splitlines()
        raise TuneError(
            f"{path.name} is not a readable GGUF file ({type(exc).__name__}: "
            f"{text[0] if text else ''}).",
            where=where,
            fix="check the file (a complete .gguf download, not cut short or edited).",
        ) from None


def _local(path: str, recipe_path: Path) -> Path | None:
    candidate = Path(path).expanduser()
    options = (
        [candidate] if candidate.is_absolute() else [recipe_path.parent / candidate, candidate]
    )
    return next((p for p in options if p.exists()), None)
