"""`precompute_ref = true`: the reference log-probs of every pair, computed once before training
with the initial model and cached on disk.

No frozen copy and no second forward per step: the policy at step 0 *is* the reference, so one
no-grad pass over the train and eval pairs gives every value the loss needs. This is what makes
a full fine-tune under ZeRO-3 possible (its partitioned parameters allow no frozen copy).

Each rank scores its share of the pairs in lockstep (ZeRO-3 gathers parameters collectively),
writes it to `<output_dir>/reference-logps/` (claimed by the main process as the run's own:
`--overwrite` removes it, a user's folder of that name is refused), and every rank reads the
merged file. The file is keyed by the model's recipe table, the precision and the exact token
ids of every pair, so a changed model or dataset computes afresh, while `--resume` (same key)
reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from pathlib import Path
from typing import Any

DIR = "reference-logps"
FIELDS = ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")
CHOSEN, REJECTED = "ref_chosen_logp", "ref_rejected_logp"


def cache_key(ctx: Any, train: list[dict], eval_: list[dict]) -> str:
    """What the reference values depend on: the model (as the recipe builds it), the precision,
    and every pair's tokens and targets, in order."""
    digest = hashlib.sha256()
    recipe = getattr(ctx, "recipe", None)
    if recipe is not None:
        resolved = recipe.resolved()
        train_table = resolved.get("train", {})
        ident = {
            "model": resolved.get("model"),
            "precision": train_table.get("precision"),
            "master_weights": train_table.get("master_weights"),
        }
        digest.update(json.dumps(ident, sort_keys=True, default=str).encode())
    for split, examples in (("train", train), ("eval", eval_)):
        digest.update(f"{split}:{len(examples)}".encode())
        for example in examples:
            for name in FIELDS:
                digest.update(array("q", example[name]).tobytes())
                digest.update(b"|")
    return digest.hexdigest()[:20]


def precompute(objective: Any, model: Any, run: Any, ctx: Any) -> Path | None:
    """Put `ref_chosen_logp` / `ref_rejected_logp` into every train and eval example dict
    (their `collate` carries them into the batch). Returns the cache file (None: no output dir)."""
    import torch

    splits = {"train": run.train, "eval": run.eval}
    key = cache_key(ctx, run.train, run.eval)
    out_dir = None
    if ctx is not None:  # the main process claims the folder before anything is written there
        out_dir = ctx.claim(DIR) if run.rank == 0 else Path(ctx.output_dir) / DIR
    path = out_dir / f"logps-{key}.pt" if out_dir else None
    barrier = run.collectives.barrier
    say = ctx.print if ctx is not None else (lambda *a, **k: None)
    if path is None or not path.exists():
        parts = _score(objective, model, run, splits)
        if path is None:
            _assign(splits, parts)
            return None
        rank_file = out_dir / f".part-{key}-{run.rank}.pt"
        if run.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        torch.save(parts, rank_file)
        barrier()
        if run.rank == 0:
            merged = {name: {} for name in splits}
            for r in range(run.world_size):
                part_file = out_dir / f".part-{key}-{r}.pt"
                for name, values in torch.load(part_file, weights_only=True).items():
                    merged[name].update(values)
            merged["key"] = key
            tmp = out_dir / f".logps-{key}.tmp"
            torch.save(merged, tmp)
            os.replace(tmp, path)
            for old in out_dir.glob("logps-*.pt"):  # another dataset's or model's: stale
                if old != path:
                    old.unlink(missing_ok=True)
        barrier()
        rank_file.unlink(missing_ok=True)
        say(f"reference log-probs: computed for {len(run.train)} train pairs -> {path}")
    else:
        say(f"reference log-probs: reusing {path}")
    cached = torch.load(path, weights_only=True)
    missing = _assign(splits, {name: cached[name] for name in splits})
    if missing:  # a truncated or hand-edited file: not trusted
        raise RuntimeError(f"{path} lacks the reference log-probs of {missing} pairs; delete it")
    return path


def _score(objective: Any, model: Any, run: Any, splits: dict) -> dict[str, dict]:
    """This rank's share: {split: {index: (chosen, rejected)}}, every rank in lockstep."""
    import torch

    inner = getattr(model, "module", model)
    was_training = inner.training
    model.eval()
    parts: dict[str, dict] = {}
    try:
        with torch.no_grad():
            for name, examples in splits.items():
                values = parts.setdefault(name, {})
                for idx, batch in run.shard(examples, objective):
                    with run.autocast():
                        per_token = objective.policy(model, batch)
                    chosen, rejected, _, _ = objective._split(per_token, batch)
                    for i, c, r in zip(idx, chosen.tolist(), rejected.tolist(), strict=False):
                        values[i] = (c, r)
    finally:
        model.train(was_training)
    return parts


def _assign(splits: dict, values: dict[str, dict]) -> int:
    """Store the values in the example dicts; how many examples found none."""
    missing = 0
    for name, examples in splits.items():
        found = values.get(name, {})
        for i, example in enumerate(examples):
            if i not in found:
                missing += 1
                continue
            example[CHOSEN], example[REJECTED] = (float(v) for v in found[i])
    return missing
