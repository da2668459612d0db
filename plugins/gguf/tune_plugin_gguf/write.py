"""Write one GGUF file: metadata, tokenizer, then the tensors streamed one by one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tune_plugin_gguf.convert import (
    ARCHS,
    LLAMA_CPP_QUANTS,
    add_hparams,
    nbytes,
    plan,
    read_config,
    tensor_data,
)
from tune_plugin_gguf.vocab import Vocab, add_to_writer, read_vocab


def _writer_class():
    from gguf import GGUFValueType, GGUFWriter

    class Writer(GGUFWriter):
        """GGUFWriter that can also write an empty array (a vocabulary without merges)."""

        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def write_gguf(
    model_dir: Path,
    out: Path,
    quant: str,
    *,
    name: str,
    metadata: dict[str, Any] | None = None,
    pre: str | None = None,
    imatrix: dict[str, Any] | None = None,
) -> Vocab:
    """Convert `model_dir` into `out` (written beside, then renamed); return the vocabulary.

    A llama.cpp quant (q4_k_m ...) is written as f16 first, then quantized by llama.cpp
    (quantize.py), with `imatrix` when given. `pre` forces `tokenizer.ggml.pre`."""
    if quant in LLAMA_CPP_QUANTS:
        from tune_plugin_gguf.quantize import quantize

        f16 = out.with_name(f".{out.name}.f16")
        try:
            vocab = write_gguf(model_dir, f16, "f16", name=name, metadata=metadata, pre=pre)
            tmp = out.with_name(f".{out.name}.tmp")
            quantize(f16, tmp, quant, imatrix)
            os.replace(tmp, out)
        finally:
            f16.unlink(missing_ok=True)
            out.with_name(f".{out.name}.tmp").unlink(missing_ok=True)
        return vocab
    import numpy as np
    from safetensors import safe_open

    config = read_config(model_dir)
    vocab = read_vocab(model_dir, int(config["vocab_size"]), pre)
    arch = ARCHS[config["model_type"]][0]
    items = plan(model_dir, config, quant)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = _writer_class()(str(tmp), arch)
    try:
        writer.add_name(name)
        metadata = dict(metadata or {})
        base = metadata.pop("base_model", None)
        if base:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, base)
        for key, value in metadata.items():
            if value:
                getattr(writer, f"add_{key}")(value)
        add_hparams(writer, config, quant)
        add_to_writer(writer, vocab)
        for item in items:
            writer.add_tensor_info(
                item.name, item.shape, np.dtype(np.float32), nbytes(item), raw_dtype=_ggml(item)
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handles: dict[str, Any] = {}
        files = sorted(model_dir.glob("*.safetensors"))
        for file in files:
            handles[str(file)] = safe_open(str(file), framework="pt")
        owner = {k: h for h in handles.values() for k in h.keys()}  # noqa: SIM118
        for item in items:
            # a stacked tensor (one key per expert) gets the handle of each key
            handle = owner if item.stack else owner.get(item.source)
            writer.write_tensor_data(tensor_data(item, handle, config))
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return vocab


def _ggml(item):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[item.qtype]
