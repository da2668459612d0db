"""The catalog of known plugin distributions (assets/catalog.toml): install hints for backends
that no installed plugin serves. Data, not code: the core names no backend. Imports no torch."""

from __future__ import annotations

import functools
from pathlib import Path

CATALOG = Path(__file__).parent.parent / "assets" / "catalog.toml"


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """Known distributions and the backends they serve."""
    from tune.recipe.toml import tomllib

    return tomllib.loads(CATALOG.read_text(encoding="utf-8"))


def install_hint(kind: str, name: str) -> str | None:
    """`pip install ...` for the distribution the catalog says serves `kind` `name`, or None."""
    for dist, entry in catalog().items():
        if name in entry.get(kind, ()):
            folder = entry.get("folder")
            local = f" (or ./{folder} from a tune checkout)" if folder else ""
            return f"pip install {dist}{local}."
    return None
