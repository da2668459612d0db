"""`[model] rope_scaling` checked against the model's config: the RoPE parameters transformers
reads and how many positions the scaling reaches. Imports no torch.

Why here and not in transformers' own validation: it only logs a warning for most mistakes (a
factor below 1, an unknown key) and raises a KeyError deep in model construction for others
(llama3 without its frequency factors); a recipe mistake should be one paragraph naming the key.
"""

from __future__ import annotations

from typing import Any

from tune.errors import TuneError, did_you_mean

# RoPE scalings `[model] rope_scaling` accepts: (required keys, optional keys) besides the type.
# `original_max_position_embeddings` defaults to the model's positions where the model has no
# scaling of its own yet (llama3 always names it: its frequency bands are set from it).
_ORIGINAL = "original_max_position_embeddings"
ROPE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "linear": ({"factor"}, set()),
    "dynamic": ({"factor"}, set()),
    "yarn": (
        {"factor"},
        {
            _ORIGINAL,
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        },
    ),  # fmt: skip
    "llama3": ({"factor", "low_freq_factor", "high_freq_factor", _ORIGINAL}, set()),
    "longrope": ({"factor", "short_factor", "long_factor"}, {_ORIGINAL, "attention_factor"}),
}


def rope_scaling_parameters(
    spec: dict[str, Any], config: dict[str, Any] | None, where: str
) -> tuple[dict[str, Any], int | None]:
    """`[model] rope_scaling` checked (against the model's config where it is known): (the
    rope parameters transformers reads, with `rope_type`; the positions the scaling reaches,
    original x factor, or None without a config). Imports no torch."""

    def refuse(why: str, fix: str) -> TuneError:
        return TuneError(f"rope_scaling {why}.", where=f"{where}: [model] rope_scaling", fix=fix)

    example = 'e.g. rope_scaling = { type = "yarn", factor = 4.0 }'
    if not isinstance(spec, dict):
        raise refuse(f"is {spec!r}, not a table", f"give a table, {example}.")
    params = dict(spec)
    kinds = {params.pop(k) for k in ("type", "rope_type") if k in params}
    if len(kinds) != 1:
        why = "names no type" if not kinds else f"names two types ({', '.join(map(str, kinds))})"
        raise refuse(why, f"give one `type` (or `rope_type`): {', '.join(ROPE_KEYS)}; {example}.")
    kind = kinds.pop()
    if kind not in ROPE_KEYS:
        raise refuse(
            f"type {kind!r} is not one tune applies{did_you_mean(kind, ROPE_KEYS)}",
            f"use one of {', '.join(ROPE_KEYS)}.",
        )
    required, optional = ROPE_KEYS[kind]
    positions = (config or {}).get("max_position_embeddings")
    existing = _rope_type(config)
    if _ORIGINAL not in params and _ORIGINAL not in required and config is not None:
        if existing not in (None, "default"):
            raise refuse(
                f"of type {kind!r} needs {_ORIGINAL}: the model already has a {existing!r} "
                f"scaling, so its {positions} positions are not the pretraining length",
                f"add {_ORIGINAL} = <the pretraining context length> to the table.",
            )
        if kind in ("yarn", "longrope") and isinstance(positions, int):
            params[_ORIGINAL] = positions
    unknown = sorted(set(params) - required - optional)
    if unknown:
        raise refuse(
            f"of type {kind!r} has unknown key {unknown[0]!r}"
            f"{did_you_mean(unknown[0], required | optional)}",
            f"use only {', '.join(sorted(required | optional))}.",
        )
    missing = sorted(required - set(params))
    if missing:
        raise refuse(
            f"of type {kind!r} lacks {', '.join(missing)}",
            f"add {', '.join(f'{m} = ...' for m in missing)} to the table ({kind} needs "
            f"{', '.join(sorted(required))}).",
        )
    factor = params["factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise refuse(
            f"factor = {factor!r}: a scaling stretches positions by a factor above 1",
            "use factor > 1 (4.0 reaches four times the original positions), or remove "
            "rope_scaling to keep the model's own positions.",
        )
    original = params.get(_ORIGINAL, positions)
    if _ORIGINAL in params and (
        isinstance(original, bool) or not isinstance(original, int) or original <= 0
    ):
        raise refuse(f"has {_ORIGINAL} = {original!r}", f"give {_ORIGINAL} as a positive integer.")
    if kind == "llama3" and not params["high_freq_factor"] > params["low_freq_factor"] > 0:
        raise refuse(
            "needs high_freq_factor > low_freq_factor > 0 (llama3 interpolates between them)",
            "use Llama 3.1's values: low_freq_factor = 1.0, high_freq_factor = 4.0.",
        )
    if kind == "longrope":
        half = _rotary_half(config)
        for key in ("short_factor", "long_factor"):
            value = params[key]
            ok = isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value
            )
            if not ok or (half is not None and len(value) != half):
                size = f"{half} " if half is not None else ""
                raise refuse(
                    f"has {key} that is not a list of {size}positive numbers",
                    f"give {key} one positive number per rotary frequency ({size or 'head_dim/2 '}"
                    "values, head_dim / 2).",
                )
    reach = int(original * factor) if isinstance(original, int) else None
    return {"rope_type": kind, **params}, reach


def _rope_type(config: dict[str, Any] | None) -> str | None:
    """The RoPE type a model config already has (transformers 5: rope_parameters; 4: rope_scaling)."""
    for key in ("rope_parameters", "rope_scaling"):
        value = (config or {}).get(key)
        if isinstance(value, dict):
            return value.get("rope_type", value.get("type"))
    return None


def _rotary_half(config: dict[str, Any] | None) -> int | None:
    """How many rotary frequencies the model has (head_dim x partial_rotary_factor / 2)."""
    if not config:
        return None
    head = config.get("head_dim")
    if not isinstance(head, int):
        hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
        if not (isinstance(hidden, int) and isinstance(heads, int) and heads > 0):
            return None
        head = hidden // heads
    rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0
    return int(head * partial) // 2
