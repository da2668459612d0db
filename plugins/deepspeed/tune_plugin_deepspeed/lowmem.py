"""Low-memory loading for ZeRO-3: every rank builds the model already partitioned and reads only
its own partition of each weight from the checkpoint files.

transformers' own ZeRO-3 load builds under `zero.Init` too, but then has rank 0 read the whole
state dict and copies it in module by module, so rank 0 holds the full model at its peak. Here
no rank ever does:

- the model is built under `deepspeed.zero.Init` with weight initialization switched off (the
  same contexts transformers enters) and without Init's broadcast of each new parameter, so
  each parameter is partitioned as soon as its module exists, its full-size pages are never
  written, and nothing is computed or sent for values about to be overwritten;
- a ZeRO-3 partition is a flat element range of the weight (`ds_tensor`, padded at the end), and
  a safetensors tensor is contiguous, so each rank fills its partition with plain reads of that
  byte range (no memory map: file pages never count in its RSS).

This runs inside the loader, before any [[adapt]] step, so adapters that read the base weights
(DoRA's magnitudes, PiSSA, beacon projections copied from attention) see the real values.
"""

from __future__ import annotations

from typing import Any

import torch
from tune.plugin import weights

LARGE_BYTES = 32 << 20


def file_entries(
    model: Any, index: dict[str, weights.FileTensor]
) -> dict[str, weights.FileTensor] | None:
    """{parameter name: its checkpoint entry} when the files hold every parameter under its
    own name and shape (tied weights under either name); None otherwise: checkpoints that
    transformers converts while loading (fused MoE experts, renamed keys, FP8), or a weight
    missing from the files, which the ordinary load would initialize."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    entries = {}
    for name, param in model.named_parameters():
        shape = getattr(param, "ds_shape", param.shape)
        entry = next(
            (e for a in aliases[id(param)] if (e := weights.file_tensor(a, shape, index))), None
        )
        if entry is None:
            return None
        entries[name] = entry
    return entries


def probe_entries(build) -> dict[str, weights.FileTensor] | None:
    """`file_entries` of the architecture built on the meta device (no memory, no collective;
    set_zero3_state keeps transformers from entering zero.Init for this build)."""
    from transformers.modeling_utils import set_zero3_state

    with torch.device("meta"), set_zero3_state():
        probe = build()
    return file_entries(probe, weights.checkpoint_index(probe))


def build_partitioned(build, config: dict[str, Any]) -> Any:
    """Build under zero.Init with init switched off; transformers then adds neither its own
    zero.Init nor its gathered re-initialization (set_zero3_state marks Init as entered)."""
    import deepspeed
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change
    from transformers.modeling_utils import set_zero3_state

    class PartitionOnly(deepspeed.zero.Init):
        """zero.Init without its per-parameter broadcast from rank 0, while the model is built.
        Every value is read from the files next, and receiving rank 0's uninitialized memory
        would write (and count in RSS) a whole copy of each weight on every other rank;
        untouched, a new parameter's pages stay unallocated and only this rank's partition is
        ever written (by the fill). DeepSpeed keeps this Init object for parameters added later
        (adapters, when deepspeed.initialize converts them): those get the ordinary path."""

        building = False

        def _zero_init_param(self, param):
            if not self.building:
                return super()._zero_init_param(param)
            self._convert_to_deepspeed_param(param)
            param.partition()
            # partition() copied the (never written) full tensor into the new partition, writing
            # its pages. For a large partition, swap in fresh memory: allocations this big are
            # mapped on their own (glibc maps anything over 32 MiB), so the written pages go back
            # to the system and the new ones stay unallocated until the fill writes them once.
            # A tied head's partition, dropped when the weights are tied, is never written.
            # Smaller ones come from the heap, where fresh memory would be reused memory anyway.
            # (Host memory only; pinned partitions for GPU offload keep their pinned pages.)
            tensor = param.ds_tensor
            large = tensor.numel() * tensor.element_size() > LARGE_BYTES
            if large and tensor.device.type == "cpu" and not tensor.is_pinned():
                tensor.data = torch.empty_like(tensor.data)

    init = PartitionOnly(config_dict_or_path=config)
    with no_init_weights(), prevent_arange_dtype_change(), init, set_zero3_state():
        init.building = True
        try:
            model = build()
        finally:
            init.building = False
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def fill_partitions(model: Any, entries: dict[str, weights.FileTensor]) -> None:
    """Read this rank's partition of every parameter (and any persistent buffer saved in the
    checkpoint) from the files."""
    import deepspeed.comm as dist

    index = weights.checkpoint_index(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            part = param.ds_tensor.ds_numel
            rank = dist.get_rank(group=param.ds_process_group)
            lo = min(rank * part, param.ds_numel)
            hi = min(lo + part, param.ds_numel)
            if hi > lo:
                weights.read_elements(entries[name], lo, hi, param.ds_tensor.data[: hi - lo])
        for module_name, module in model.named_modules():
            for key, buffer in module._buffers.items():
                if buffer is None or key in module._non_persistent_buffers_set:
                    continue  # computed at construction, never read from a checkpoint
                name = f"{module_name}.{key}" if module_name else key
                entry = weights.file_tensor(name, buffer.shape, index)
                if entry is not None:
                    weights.read_elements(entry, 0, entry.numel, buffer)
