"""Size of tune's plugin contract and shape of its core, measured the same way on any checkout.

    python bench/api_metrics.py [--root CHECKOUT] [--trace] [--json OUT]

Static (from the source, nothing imported):
- hook specs: `tune_*` functions in the hook-spec module;
- public names: `__all__` of `tune.plugin`;
- single-implementer hooks: specs implemented by exactly one of the bundled plugins (the core's
  built-in plugin modules, plugins/*, contrib/*), zero-implementer specs listed apart;
- the largest core module (lines);
- import cycles: strongly connected components of the module-level import graph of `tune.*`
  (imports inside functions and under `if TYPE_CHECKING` are lazy and left out), and the depth
  of the longest chain of module-level imports between core modules.

Dynamic (`--trace`, imports the checkout's `tune` as the package under test): one tiny
full-fine-tune run of built-in backends only, traced with `sys.setprofile`; every call into a
core function that receives the run's recipe (or an object holding it: the run context, the
trainer or session) is recorded with its module. Reported: how many core modules the recipe
passes through, and how often the path comes back to a module it had left (consecutive calls
in one module count once).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def module_name(core: Path, path: Path) -> str:
    parts = list(path.relative_to(core).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["tune", *parts])


def hookspec_file(core: Path) -> Path:
    for candidate in (core / "hookspecs.py", core / "registry" / "hookspecs.py"):
        if candidate.exists():
            return candidate
    raise SystemExit(f"no hookspecs module under {core}")


def hook_specs(core: Path) -> list[str]:
    tree = ast.parse(hookspec_file(core).read_text())
    return [
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("tune_")
    ]


def public_names(core: Path) -> list[str]:
    tree = ast.parse((core / "plugin.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def implementers(root: Path, specs: list[str]) -> dict[str, set[str]]:
    """Hook name -> the bundled plugins (by package) whose code defines it as an implementation."""
    found: dict[str, set[str]] = {s: set() for s in specs}
    sources = list((root / "core" / "builtin").glob("*.py"))
    for folder in ("plugins", "contrib"):
        sources += [
            p for p in (root / folder).glob("*/tune_plugin_*/**/*.py") if "tests" not in p.parts
        ]
    for path in sources:
        relative = path.relative_to(root).parts
        owner = f"builtin.{path.stem}" if relative[0] == "core" else relative[1]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in found:
                decorated = any("hookimpl" in ast.unparse(d) for d in node.decorator_list)
                if decorated:
                    found[node.name].add(owner)
    return found


def module_imports(core: Path) -> dict[str, set[str]]:
    """Core module -> the core modules it imports at module level (eagerly)."""
    modules = {module_name(core, p): p for p in core.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in tree.body:
            targets: list[str] = []
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for sub in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
                if isinstance(sub, ast.Import):
                    targets += [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    base = sub.module or ""
                    if sub.level:
                        anchor = package.split(".")
                        anchor = anchor[: len(anchor) - (sub.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    targets.append(base)
                    targets += [f"{base}.{a.name}" for a in sub.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles_and_depth(graph: dict[str, set[str]]) -> tuple[list[list[str]], int, list[str]]:
    """Strongly connected components of size > 1 (Tarjan), and the longest import chain."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    comp_of = {v: i for i, c in enumerate(comps) for v in c}
    dag: dict[int, set[int]] = defaultdict(set)
    for v, ws in graph.items():
        for w in ws:
            if comp_of[v] != comp_of[w]:
                dag[comp_of[v]].add(comp_of[w])
    memo: dict[int, list[int]] = {}

    def longest(c: int) -> list[int]:
        if c not in memo:
            best: list[int] = []
            for d in dag[c]:
                path = longest(d)
                if len(path) > len(best):
                    best = path
            memo[c] = [c, *best]
        return memo[c]

    chain = max((longest(c) for c in range(len(comps))), key=len)
    names = [sorted(comps[c])[0] for c in chain]
    return [sorted(c) for c in comps if len(c) > 1], len(chain) - 1, names


def static(root: Path) -> dict:
    core = root / "core"
    specs = hook_specs(core)
    impl = implementers(root, specs)
    lines = {module_name(core, p): len(p.read_text().splitlines()) for p in core.rglob("*.py")}
    largest = max(lines, key=lines.get)
    cycles, depth, chain = cycles_and_depth(module_imports(core))
    return {
        "hook_specs": len(specs),
        "hooks": {s: sorted(impl[s]) for s in specs},
        "single_implementer_hooks": sorted(s for s in specs if len(impl[s]) == 1),
        "unimplemented_hooks": sorted(s for s in specs if not impl[s]),
        "public_names": len(public_names(core)),
        "largest_core_module": {"module": largest, "lines": lines[largest]},
        "core_modules": len(lines),
        "import_cycles": cycles,
        "import_chain_depth": depth,
        "import_chain": chain,
    }


TRACER = r"""
import json, sys
from pathlib import Path
recipe_path, out = Path(sys.argv[1]), Path(sys.argv[2])
from tune.testing import run
import tune
seen = []
target = {}

def holds_recipe(value):
    r = target.get("recipe")
    if r is None or value is None:
        return False
    if value is r:
        return True
    try:
        return getattr(value, "recipe", None) is r
    except Exception:
        return False

def profile(frame, event, arg):
    if event != "call":
        return
    module = frame.f_globals.get("__name__", "")
    if not module.startswith("tune.") or module.startswith("tune.testing"):
        return
    code = frame.f_code
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    local = frame.f_locals
    if "recipe" not in target:
        for n in names:
            v = local.get(n)
            if type(v).__name__ == "Recipe":
                target["recipe"] = v
    if any(holds_recipe(local.get(n)) for n in names if n != "self"):
        seen.append((module, code.co_name))

sys.setprofile(profile)
try:
    run(recipe_path)
finally:
    sys.setprofile(None)
out.write_text(json.dumps(seen))
"""


def trace(root: Path) -> dict:
    """Run a tiny built-in-only recipe with the checkout's core as `tune`; follow the recipe."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        site = tmp_path / "site"
        site.mkdir()
        (site / "tune").symlink_to(root / "core")
        rows = (root / "core" / "assets" / "testing" / "chat.jsonl").read_text().splitlines()[:16]
        (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(
            f'[model]\npath = "tune:tiny-llama"\nmax_seq_len = 64\n'
            f'[data]\ntrain = "{tmp_path / "train.jsonl"}"\ntemplate = "llama-3.1"\n'
            f"eval_fraction = 0.25\n"
            f'[train]\noutput_dir = "{tmp_path / "run"}"\nmax_steps = 2\nmicro_batch_size = 4\n'
            f'precision = "fp32"\nsave_every = 1\n[generate]\nprompts = ["hi"]\nmax_new_tokens = 2\n'
        )
        script = tmp_path / "tracer.py"
        script.write_text(TRACER)
        out = tmp_path / "seen.json"
        env = {
            **os.environ,
            "PYTHONPATH": str(site),
            "TUNE_DISABLE_PLUGIN_AUTOLOAD": "1",
            "TUNE_CACHE": str(tmp_path / "cache"),
        }
        subprocess.run(
            [sys.executable, str(script), str(recipe), str(out)], check=True, env=env, cwd=tmp
        )
        seen = json.loads(out.read_text())
    path: list[str] = []
    for module, _ in seen:
        if not path or path[-1] != module:
            path.append(module)
    returns = sum(1 for i, m in enumerate(path) if m in path[:i])
    return {
        "recipe_modules": len(set(path)),
        "recipe_returns": returns,
        "recipe_calls": len(seen),
        "recipe_path": path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    result = static(root)
    if args.trace:
        result.update(trace(root))
    brief = {k: v for k, v in result.items() if k not in ("hooks", "recipe_path", "import_chain")}
    print(json.dumps(brief, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
