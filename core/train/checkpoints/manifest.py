"""Checkpoint manifests: what a checkpoint holds, so `--resume` can trust it or say why not.

`manifest.json` is written last into a checkpoint (after every other file, atomically): the step,
the size and sha256 of every file, and the training-relevant settings of the run (the resolved
recipe minus what does not change training, plus the data's content fingerprint and the world
size). On resume the files are verified (a damaged checkpoint is reported and the previous
whole one used), and the settings compared with the new recipe's: a change is refused with a
diff unless `--resume-changed` says it is meant.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# damage() of a checkpoint without a manifest: its files cannot be checked.
UNVERIFIED = "no manifest.json, so its files cannot be verified"

# Keys that may change between a run and its resume: they do not change what is trained.
FREE_KEYS = {
    "": {"description", "eval", "generate", "track"},
    "train": {
        "output_dir",
        "log_every",
        "save_every",
        "keep_last",
        "eval_every",
        "early_stopping_patience",
        "early_stopping_threshold",
        "chunked_loss",
        "compile",
        "lean_activations",
        "tiled_mlp",
        "tiled_mlp_tokens",
        "offload_activations",
        "gradient_checkpointing",
    },
    "data": {"eval", "cache", "num_proc"},
}


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def training_settings(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe without the keys that may change freely, flattened to dotted keys."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    for table, value in resolved.items():
        if table in FREE_KEYS[""]:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in FREE_KEYS.get(table, ())}
        walk(table, value)
    return flat


def describe_run(resolved: dict[str, Any], data_fingerprint: str, world_size: int) -> dict:
    settings = training_settings(resolved)
    settings["data.content"] = data_fingerprint
    settings["world_size"] = world_size
    return settings


def write(folder: Path, step: int, settings: dict[str, Any]) -> None:
    """Record every file of `folder` (sizes and hashes) and the settings, atomically, last."""
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    body = {"step": step, "files": files, "settings": settings}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest, None when there is none, `{"files": None, "settings": None}` when it is not
    a manifest (unreadable, not an object, keys missing or of the wrong type)."""
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    unreadable = {"files": None, "settings": None}
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return unreadable
    if not isinstance(body, dict):
        return unreadable
    files, settings = body.get("files"), body.get("settings")
    if not isinstance(files, dict) or not isinstance(settings, dict | None):
        return unreadable
    for name, want in files.items():
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int)):
            return unreadable
        if not isinstance(want.get("sha256"), str) or not _safe_name(name):
            return unreadable
    return body


def _safe_name(name: str) -> bool:
    """A relative path inside the checkpoint: no absolute path, no '..'."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def damage(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted, or None when every file checks out.

    A checkpoint without a manifest (from before manifests, or changed by hand) is reported as
    `UNVERIFIED`: the caller decides whether to use it, loudly.
    """
    body = read(folder)
    if body is None:
        return UNVERIFIED if (folder / "state.json").exists() else "state.json is missing"
    if not isinstance(body.get("files"), dict):
        return f"{MANIFEST} is unreadable"
    for name, want in body["files"].items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size:,} bytes, {want['bytes']:,} were written"
        if sha256_file(path) != want["sha256"]:
            return f"{name} does not match the hash written with it"
    return None


def listed_files(folder: Path) -> set[str] | None:
    """The files the manifest says this checkpoint holds (None without a readable manifest)."""
    body = read(folder)
    if body is None or not isinstance(body.get("files"), dict):
        return None
    return set(body["files"]) | {MANIFEST}


def changed(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every training-relevant setting that differs."""
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    def show(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{key}: {show(a)} -> {show(b)}" for key, a, b in changes)
