"""GGUF files as training input: `[model] path = "model.gguf"`, or `gguf_file` beside a folder.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=name)`): the tensors are
dequantized to the requested dtype and the tokenizer (vocabulary, merges, special tokens, chat
template) is rebuilt from the file's metadata. This module only turns the recipe's keys into
those arguments, and refuses early, with the list transformers supports, a file whose
architecture it cannot read (instead of a ValueError deep in loading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.plugin import TuneError

SUFFIX = ".gguf"


def gguf_location(model: Any, recipe_path: Path | None = None) -> tuple[str, dict[str, str]]:
    """(path for from_pretrained, {"gguf_file": name} or {}) from a recipe's [model] table.

    `path` may name a .gguf file (relative to the recipe's folder, then the working directory),
    or a folder or hub repository holding the file `gguf_file`.
    """
    path = str(model.path)
    gguf_file = getattr(model, "gguf_file", None)
    where = f"{recipe_path}: [model] path" if recipe_path else "[model] path"
    if gguf_file is None and not path.endswith(SUFFIX):
        return path, {}
    if gguf_file is None:
        candidates = [Path(path)]
        if recipe_path is not None and not Path(path).is_absolute():
            candidates.insert(0, Path(recipe_path).parent / path)
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise TuneError(
                f"GGUF file not found: {path}.",
                where=where,
                fix="give the path of a .gguf file (relative to the recipe's folder), or a hub "
                "repository as path with gguf_file = the file's name.",
            )
        check_architecture(file, where)
        return str(file.parent.resolve()), {"gguf_file": file.name}
    local = Path(path) / gguf_file
    if local.is_file():
        check_architecture(local, f"{recipe_path}: [model] gguf_file")
    return path, {"gguf_file": gguf_file}


def load_model(path: str, kwargs: dict[str, Any], gguf: dict[str, str]) -> Any:
    """`AutoModelForCausalLM.from_pretrained(path, **kwargs)`; from a GGUF, a dense model.

    Every tensor is unpacked at load (`GgufConfig(dequantize=True)`, also where transformers
    could keep blocks packed) and the GGUF quantizer is dropped afterwards: the model then
    trains, and saves as safetensors, like one loaded from a checkpoint folder.
    """
    from transformers import AutoModelForCausalLM

    if not gguf:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if kwargs.get("quantization_config") is not None:
        raise TuneError(
            "a GGUF model is loaded dequantized and cannot be quantized again on load.",
            where="[model] quantize",
            fix="remove quantize (train the GGUF's weights in 16/32 bits), or start from the "
            "original safetensors checkpoint for QLoRA.",
        )
    from transformers import GgufConfig

    config = GgufConfig(gguf_file=gguf["gguf_file"], dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, **kwargs, **gguf, quantization_config=config
        )
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise TuneError(
            f"the GGUF file {gguf['gguf_file']} cannot be loaded: its tensors do not agree with "
            f"its own metadata ({type(exc).__name__}: {text[0] if text else ''}).",
            where=f"[model] path ({path})",
            fix="use an intact .gguf (download it again) or the original safetensors checkpoint.",
        ) from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def check_architecture(file: Path, where: str) -> None:
    """A TuneError naming what transformers can load when the file's architecture is not."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TuneError(
            "reading a GGUF model needs the `gguf` package, which is not installed.",
            where=where,
            fix="pip install gguf (transformers' GGUF loader uses it too).",
        ) from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        field = GGUFReader(str(file)).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # the reader raises struct, value, index and key errors alike
        raise TuneError(
            f"not a readable GGUF file ({type(exc).__name__}: {exc}).",
            where=where,
            fix="check the file (a complete .gguf download).",
        ) from None
    known = set(GGUF_SUPPORTED_ARCHITECTURES)
    try:
        from transformers.integrations.gguf import GGUF_ARCHS

        known |= set(GGUF_ARCHS)
    except ImportError:  # older transformers: only the table above
        pass
    if arch not in known and arch.replace("moe", "_moe") not in known:
        raise TuneError(
            f"transformers cannot load GGUF files of architecture '{arch}'.",
            where=where,
            fix=f"use a model of a supported architecture ({', '.join(sorted(known))}), or "
            "the original safetensors checkpoint.",
        )
