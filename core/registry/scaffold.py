"""`tune plugins new`: a complete, tested plugin distribution to start from, for each kind.

The templates under assets/scaffold/ are working plugins (a top-k accuracy metric, SGD, a text
files source, a CSV tracker, a label-smoothed objective, a prompt/completion template format,
a freeze-all-but adapter, a length-bounded reward, a one-prompt-at-a-time rollout engine), each
with tests that run a tiny real training through it. The
contrib/tune-plugin-example folder is what `tune plugins new example --kind metric --backend
token_accuracy` writes. Imports no torch.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from tune.errors import TuneError

TEMPLATES = Path(__file__).parent.parent / "assets" / "scaffold"
KINDS = {
    "metric": "a metric computed at each eval point",
    "optimizer": "an optimizer",
    "data_source": "a data source: where rows come from",
    "data_format": "a data format: rows to tokenized examples",
    "objective": "a training objective: the loss of a step",
    "tracker": "an experiment tracker receiving the run's events",
    "adapter": "an [[adapt]] step",
    "reward": "a reward scoring completions in online RL",
    "rollout": "a rollout engine sampling completions in online RL",
}


def plugin_names(name: str, backend: str | None) -> dict[str, str]:
    """`my-metric` -> distribution tune-plugin-my-metric, module tune_plugin_my_metric, ..."""
    plugin = name.removeprefix("tune-plugin-")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", plugin):
        raise TuneError(
            f"plugin name '{name}' is not a lowercase identifier.",
            fix="use letters, digits, '-' and '_', starting with a letter (e.g. my-metric).",
        )
    snake = plugin.replace("-", "_")
    backend = backend or snake
    if not re.fullmatch(r"[a-z][a-z0-9_]*", backend):
        raise TuneError(
            f"backend name '{backend}' is not a lowercase identifier.",
            fix="use letters, digits and '_' (it is what recipes write).",
        )
    return {
        "plugin": plugin,
        "dist": f"tune-plugin-{plugin}",
        "module": f"tune_plugin_{snake}",
        "backend": backend,
        "Class": "".join(part.title() for part in backend.split("_")) + "Settings",
    }


def new_plugin(name: str, kind: str, dest: Path, backend: str | None = None) -> Path:
    """Write the plugin's folder under `dest`; returns it. Refuses to overwrite anything."""
    names = plugin_names(name, backend)
    root = dest / names["dist"]
    if root.exists() and any(root.iterdir()):
        raise TuneError(
            "the folder already exists and is not empty.",
            where=str(root),
            fix="choose another name or --dir, or remove the folder first.",
        )
    command = f"tune plugins new {names['plugin']} --kind {kind}"
    if backend:
        command += f" --backend {backend}"
    values = {**names, "kind": kind, "command": command}
    values["description"] = f"tune plugin: {KINDS[kind]}."

    def render(path: Path) -> str:
        return string.Template(path.read_text(encoding="utf-8")).substitute(values)

    values["recipe"] = render(TEMPLATES / kind / "recipe.toml.tmpl").strip()
    values["how"] = render(TEMPLATES / kind / "how.md.tmpl").strip()
    files = {
        "pyproject.toml": render(TEMPLATES / "common" / "pyproject.toml.tmpl"),
        "README.md": render(TEMPLATES / "common" / "README.md.tmpl"),
        f"{names['module']}/__init__.py": render(TEMPLATES / kind / "module.py.tmpl"),
        f"tests/test_{names['module'].removeprefix('tune_plugin_')}.py": render(
            TEMPLATES / kind / "test.py.tmpl"
        ),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
