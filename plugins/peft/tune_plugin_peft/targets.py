"""What an adapter reaches on a mixture-of-experts model, chosen by name.

In transformers 5.x a MoE block's experts are fused 3-D parameters (Qwen3-MoE's
`mlp.experts.gate_up_proj` is [experts, 2 * inter, hidden]), not `nn.Linear`s, and the router is
a small module of its own. PEFT adapts such parameters through `target_parameters`. Left to
itself with `"all-linear"`, PEFT's v4-to-v5 conversion puts LoRA on the router as well (and on
no expert of an architecture it has no conversion for), so the targets are resolved here, on
the model, into explicit lists: every linear layer but the output head and the routers, plus
the fused expert weights unless `experts = false`; the router only with `router = true`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


@dataclass
class MoeLayout:
    """Where a model keeps its experts and routers (empty for a dense model)."""

    experts: list[str] = field(default_factory=list)  # full names of fused expert parameters
    routers: list[str] = field(default_factory=list)  # full names of router modules

    @property
    def is_moe(self) -> bool:
        return bool(self.experts or self.routers)


def _is_experts(name: str, module: Any) -> bool:
    return name.rsplit(".", 1)[-1] == "experts" or type(module).__name__.endswith("Experts")


def moe_layout(model: Any) -> MoeLayout:
    """The fused expert parameters (3-D, under an `experts` module) and the routers (siblings of
    an `experts` module named gate/router) of `model`."""
    layout = MoeLayout()
    for name, module in model.named_modules():
        if not _is_experts(name, module):
            continue
        for pname, param in module.named_parameters(recurse=False):
            if param.ndim == 3 or len(getattr(param, "ds_shape", ())) == 3:
                layout.experts.append(f"{name}.{pname}")
        parent = name.rpartition(".")[0]
        for router in ROUTER_NAMES:
            full = f"{parent}.{router}" if parent else router
            if _has(model, full) and full not in layout.routers:
                layout.routers.append(full)
    return layout


def _has(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _short(name: str) -> str:
    """`model.layers.3.mlp.experts.down_proj` -> `mlp.experts.down_proj` (the name per layer)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i + 1 :])
    return name


def resolve(model: Any, targets: Any, experts: bool | None, router: bool) -> tuple[Any, list[str]]:
    """(target_modules, target_parameters) for PEFT. Dense models keep `targets` as given."""
    import torch

    layout = moe_layout(model)
    if not layout.is_moe:
        return targets, []
    want_experts = experts if experts is not None else targets == "all-linear"
    inside = tuple(f"{r}." for r in layout.routers) + tuple(
        f"{e.rpartition('.')[0]}." for e in layout.experts
    )
    params = sorted({_short(p) for p in layout.experts}) if want_experts else []
    if targets == "all-linear":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        modules = [
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and module is not head
            and name not in layout.routers
            and not name.startswith(inside)
        ]
    else:
        modules = targets
    if router:
        for name in layout.routers:
            module = model.get_submodule(name)
            if isinstance(module, torch.nn.Linear):
                modules = list(modules or []) + [name]
            elif getattr(module, "weight", None) is not None:
                params.append(f"{_short(name)}.weight")
    return modules, sorted(set(params))


def reach(peft_model: Any) -> tuple[str, bool | None]:
    """(one line saying what trains, by part; whether a MoE model's experts are adapted, None
    for a dense model)."""
    layout = moe_layout(peft_model.get_base_model())
    parts: Counter[str] = Counter()
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        if ".experts." in name:
            part = "experts"
        elif any(f"{router}." in name for router in layout.routers):
            part = "router"
        elif "attn" in name or "attention" in name:
            part = "attention"
        elif "mlp" in name or "feed_forward" in name:
            part = "mlp"
        else:
            part = "other"
        parts[part] += param.numel()
    by_part = ", ".join(f"{part} {n:,}" for part, n in sorted(parts.items()))
    if not layout.is_moe:
        return f"trainable by part: {by_part}", None
    reached = parts["experts"] > 0
    line = (
        f"trainable by part: {by_part}; the model's {len(layout.experts)} fused expert weights "
        f"are {'adapted' if reached else 'NOT adapted'}, its router "
        f"{'adapted' if parts['router'] else 'frozen'}"
    )
    return line, reached
