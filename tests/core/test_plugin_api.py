"""The plugin API as a product: one public face, every extension point usable by a plugin object.

The plugin objects here are what a third party would write: they import `tune.plugin` only and
are registered for one test with `tune.testing`'s `tune_plugin` fixture.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from tune.plugin import (
    LossOutput,
    Objective,
    Settings,
    Tracker,
    hookimpl,
)
from tune.testing import recipe_dict, train_losses, write_recipe

from tests.conftest import REPO
from tests.core import hook_plugin

PUBLIC = {"tune.plugin", "tune.testing"}


def _tune_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "tune" or name.startswith("tune."):
                yield node.lineno, name


def test_bundled_plugins_and_their_tests_import_only_the_public_api():
    files = sorted((REPO / "plugins").rglob("*.py")) + sorted((REPO / "contrib").rglob("*.py"))
    assert len(files) > 20
    private = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in files
        for line, name in _tune_imports(path)
        if name not in PUBLIC
    ]
    assert not private, "\n".join(private)
    test_files = [p for p in files if "/tests/" in str(p)]
    assert test_files, "plugin tests live in plugins/<name>/tests/"
    for path in test_files:
        assert "from tests" not in path.read_text(), path


def test_the_cores_own_plugins_import_only_the_public_api_and_each_other():
    """The built-in backends are written as a third party would write them."""
    files = sorted((REPO / "core" / "builtin").glob("*.py"))
    private = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in files
        for line, name in _tune_imports(path)
        if name not in PUBLIC and not name.startswith("tune.builtin")
    ]
    assert not private, "\n".join(private)


def test_public_api_imports_no_torch_and_lists_only_what_exists():
    code = (
        "import sys, tune.plugin as p\n"
        "missing = [n for n in p.__all__ if not hasattr(p, n)]\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "print(missing, heavy, p.API_VERSION)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "[]", "2.0"]


def test_every_hook_is_in_lifecycle_order_documented_and_kinds_name_real_hooks():
    from tune.registry import hookspecs
    from tune.registry.kinds import KINDS

    specs = [n for n in vars(hookspecs) if n.startswith("tune_")]
    doc = hookspecs.__doc__
    positions = [doc.index(name) for name in specs]
    assert positions == sorted(positions), "the module docstring lists hooks in file order"
    for name in specs:
        assert getattr(hookspecs, name).__doc__, name
    for kind in KINDS.values():
        for hook in kind.required + kind.optional:
            assert hook in specs, (kind.name, hook)
    guide = (REPO / "docs" / "writing-plugins.md").read_text()
    import tune.plugin

    for name in specs + list(tune.plugin.__all__):
        assert name in guide, f"docs/writing-plugins.md does not mention {name}"


def test_catalog_agrees_with_what_bundled_plugins_declare():
    from tune.registry.catalog import catalog
    from tune.registry.manager import get_plugin_manager

    pm = get_plugin_manager()
    by_dist: dict[str, dict[str, list[str]]] = {}
    for backend in pm.backends.values():
        if backend.for_loader is None:
            dist = pm.infos[backend.plugin].distribution
            by_dist.setdefault(dist, {}).setdefault(backend.kind, []).append(backend.name)
    for dist, entry in catalog().items():
        declared = {kind: sorted(names) for kind, names in by_dist.get(dist, {}).items()}
        expected = {k: sorted(v) for k, v in entry.items() if k != "folder"}
        assert declared == expected, dist
        assert (REPO / entry["folder"] / "pyproject.toml").is_file()


def test_core_modules_stay_small():
    sizes = {p: len(p.read_text().splitlines()) for p in (REPO / "core").rglob("*.py")}
    big = {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > 420}
    assert not big, big


# -- the objective extension point -----------------------------------------------------------------
class PerSequence(Objective):
    """Mean token loss per sequence, normalized by sequences: a different unit than tokens."""

    unit = "sequences"

    def count(self, batch):
        return int(((batch["labels"][:, 1:] != -100).sum(1) > 0).sum())

    def loss(self, model, batch):
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        per_token = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        n = (targets != -100).sum(1).clamp(min=1)
        per_sequence = per_token.sum(1) / n
        return LossOutput(
            per_sequence.sum(),
            metrics={"long_share": float((n > 4).sum()), "tokens": (float(n.sum()), 1.0)},
        )


class ObjectivePlugin:
    @hookimpl
    def tune_provide(self, provide):
        provide.objective("per_sequence", doc="mean token loss per sequence", build=PerSequence)


def _grads(tmp_path, run_recipe, micro, accum):
    hook_plugin.GRADS.clear()
    data = recipe_dict(
        tmp_path,
        objective={"name": "per_sequence"},
        strategy={"name": "recording"},
        data={"shuffle": False},
        train={"micro_batch_size": micro, "grad_accum": accum, "max_steps": 1, "max_grad_norm": 0},
    )
    summary, _ = run_recipe(data, plugins=["tests.core.hook_plugin"], overwrite=True)
    return hook_plugin.GRADS[0], summary


def test_a_plugin_objective_keeps_accumulation_exact_in_its_own_unit(
    tmp_path, run_recipe, tune_plugin
):
    tune_plugin(ObjectivePlugin(), "per_sequence_plugin")
    big, _ = _grads(tmp_path, run_recipe, micro=4, accum=1)
    small, _ = _grads(tmp_path, run_recipe, micro=1, accum=4)
    worst = max(float((big[k] - small[k]).abs().max()) for k in big)
    assert worst <= 1e-5 * max(float(big[k].abs().max()) for k in big)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert 0.0 <= train[0]["long_share"] <= 1.0  # a float metric: per unit (sequence)
    assert train[0]["tokens"] > 1  # a (sum, n) metric: its own mean, tokens per call


def test_objective_and_format_must_agree_on_examples(tmp_path, tune_plugin):
    class PairObjective(ObjectivePlugin):
        @hookimpl
        def tune_provide(self, provide):
            provide.objective("pairs_only", examples="preference", build=PerSequence)

    tune_plugin(PairObjective(), "pairs")
    from tune.errors import TuneError
    from tune.testing import load_recipe

    path = write_recipe(tmp_path, recipe_dict(tmp_path, objective={"name": "pairs_only"}))
    with pytest.raises(TuneError, match="gives 'lm' examples.*trains on 'preference'"):
        load_recipe(path)


# -- the tracker extension point -------------------------------------------------------------------
EVENTS: list[tuple] = []


class Recorder(Tracker):
    def start(self, run):
        EVENTS.append(("start", run.step, run.resumed, run.state, run.recipe["train"]["seed"]))

    def log(self, kind, step, values):
        EVENTS.append((kind, step, sorted(values)))

    def checkpoint(self, step, path):
        EVENTS.append(("checkpoint", step, path.name))

    def samples(self, step, samples):
        EVENTS.append(("samples", step, [s["prompt"] for s in samples]))

    def end(self, summary):
        EVENTS.append(("end", summary["steps"]))

    def state(self):
        return {"run_id": "abc"}


class Flaky(Tracker):
    def log(self, kind, step, values):
        if step == 2:
            raise ConnectionError("tracking server gone")


class RecorderSettings(Settings):
    project: str = "demo"


class TrackerPlugin:
    @hookimpl
    def tune_provide(self, provide):
        provide.tracker("recorder", RecorderSettings, build=Recorder)
        provide.tracker("flaky", build=Flaky)


def test_trackers_get_every_event_resume_their_run_and_a_failing_one_stops_nothing(
    tmp_path, run_recipe, tune_plugin, capsys
):
    tune_plugin(TrackerPlugin(), "trackers")
    EVENTS.clear()
    data = recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity"]},
        generate={"prompts": ["reverse hi"], "max_new_tokens": 2},
        train={"max_steps": 4, "save_every": 2, "eval_every": 2},
        track=[{"name": "recorder", "project": "x"}, {"name": "flaky"}],
    )
    summary, recipe = run_recipe(data)
    assert recipe.backends["track"][0].settings.project == "x"
    assert EVENTS[0] == ("start", 0, False, {}, 42)
    assert [e[1] for e in EVENTS if e[0] == "train"] == [1, 2, 3, 4]
    assert "loss" in EVENTS[1][2] and "grad_norm" in EVENTS[1][2]
    assert [e[:2] for e in EVENTS if e[0] in ("eval", "checkpoint")] == [
        ("eval", 2),
        ("checkpoint", 2),
        ("checkpoint", 4),
        ("eval", 4),
    ]
    assert EVENTS[-2:] == [("samples", 4, ["reverse hi"]), ("end", 4)]
    assert "tracker 'flaky' failed in log" in capsys.readouterr().out
    assert len(train_losses(tmp_path / "run")) == 4  # metrics.jsonl keeps everything
    # --resume hands each tracker the state it saved with the checkpoint
    EVENTS.clear()
    data["train"]["max_steps"] = 5
    from tune.testing import run

    run(write_recipe(tmp_path, data, "more.toml"), resume=True, resume_changed=True)
    assert EVENTS[0][:4] == ("start", 4, True, {"run_id": "abc"})


# -- the data source extension point ---------------------------------------------------------------
class MemorySource:
    """Rows from a Python list: no files at all (a stand-in for a database or an API)."""

    ROWS = [{"text": f"row {i} " * (i % 5 + 1)} for i in range(30)]

    @hookimpl
    def tune_provide(self, provide):
        provide.data_source("memory", build=self.build)

    def build(self, settings, ctx):
        from tune.plugin import DataSource

        rows = self.ROWS

        class Memory(DataSource):
            def check(self, specs, where):
                return f"{len(rows)} rows in memory"

            def rows(self, specs, where):
                for i, row in enumerate(rows):
                    yield f"memory row {i}", row

            def fingerprint(self, specs, where):
                return json.dumps(rows)

            def stream(self, specs, where, start):
                for i in range(start["i"] if start else 0, len(rows)):
                    yield {"i": i}, f"memory row {i}", rows[i]

        return Memory(settings, ctx)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_plugin_source_gets_formats_splits_and_streaming_for_free(
    tmp_path, run_recipe, tune_plugin, streaming
):
    tune_plugin(MemorySource(), "memory")
    data = recipe_dict(
        tmp_path,
        data={"format": "text", "train": "anything", "source": "memory", "streaming": streaming},
        train={"max_steps": 3},
    )
    del data["data"]["template"]
    if not streaming:
        data["data"]["eval_fraction"] = 0.2
        data["eval"] = {"metrics": ["perplexity"]}
    summary, _ = run_recipe(data)
    assert summary["steps"] == 3
    if not streaming:
        assert summary["data"]["train_examples"] == 24 and summary["data"]["eval_examples"] == 6
        assert "eval_loss" in summary["eval"]
