"""Plugin manager: entry points, broken plugins, double and missing providers, selection."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
from tune.errors import TuneError
from tune.recipe import load_recipe
from tune.registry.kinds import KINDS
from tune.registry.manager import get_plugin_manager
from tune.testing import recipe_dict, run_cli, write_recipe

PLUGIN_SRC = """
from tune.plugin import Settings, hookimpl

class S(Settings):
    x: int = 1

@hookimpl
def tune_provide(provide):
    provide.{kind}("{name}", S{scope})
"""


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """Install a fake distribution with a `tune` entry point onto sys.path, for real discovery."""

    def _make(dist: str, version: str, source: str, ep_name: str | None = None) -> str:
        module = f"fake_{uuid.uuid4().hex[:8]}"
        root = tmp_path / module
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        name = ep_name or module
        (info / "entry_points.txt").write_text(f"[tune]\n{name} = {module}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        return name

    return _make


def provider(kind: str, name: str, scope: str = "", hooks: bool = True) -> str:
    """A plugin declaring one backend, with stubs of the hooks its kind requires (or not)."""
    src = PLUGIN_SRC.format(kind=kind, name=name, scope=f", for_loader={scope!r}" if scope else "")
    if hooks:
        for hook in KINDS[kind].required:
            src += f"\n@hookimpl\ndef {hook}():\n    return None\n"
    return src


def test_builtins_are_registered_like_plugins():
    pm = get_plugin_manager()
    for name in ("transformers", "formats", "adamw", "single", "perplexity"):
        assert pm.infos[name].distribution == "tune"
        assert pm.infos[name].status == "ok"
    assert pm.backend("loader", "transformers").plugin == "transformers"
    assert {b.name for b in pm.declared("data_format")} >= {
        "chat",
        "alpaca",
        "prompt_completion",
        "text",
    }


def test_entry_point_plugin_is_discovered(make_dist):
    name = make_dist("tune-plugin-zeta", "1.2.3", provider("optimizer", "zeta_opt"))
    pm = get_plugin_manager()
    info = pm.infos[name]
    assert (info.distribution, info.version, info.status) == ("tune-plugin-zeta", "1.2.3", "ok")
    assert pm.backend("optimizer", "zeta_opt").plugin == name


def test_broken_entry_point_is_listed_and_only_breaks_runs_that_need_it(make_dist, tmp_path):
    name = make_dist("tune-plugin-broken", "0.1", "raise ImportError('needs libfoo.so')\n")
    pm = get_plugin_manager()
    assert pm.infos[name].status == "error: ImportError: needs libfoo.so"
    # A recipe that does not need it still validates...
    load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path)), plugins=pm)
    # ...and one that needs a missing backend names the broken plugin as a suspect.
    bad = recipe_dict(tmp_path, optimizer={"name": "lion"})
    with pytest.raises(TuneError) as err:
        load_recipe(write_recipe(tmp_path, bad), plugins=pm)
    assert name in str(err.value) and "needs libfoo.so" in str(err.value)
    listing = json.loads(run_cli("plugins", "list", "--json").stdout)
    assert isinstance(listing, list)


def test_double_provider_is_a_startup_error_naming_both(make_dist):
    make_dist("tune-plugin-one", "1.0", provider("adapter", "twin"))
    make_dist("tune-plugin-two", "2.0", provider("adapter", "twin"))
    with pytest.raises(TuneError) as err:
        get_plugin_manager()
    text = str(err.value)
    assert "tune-plugin-one 1.0" in text and "tune-plugin-two 2.0" in text and "twin" in text
    # `plugins list` still works and shows the conflict instead of crashing.
    pm = get_plugin_manager(strict=False)
    assert pm.conflicts


def test_missing_provider_suggests_and_names_the_distribution(tmp_path):
    pm = get_plugin_manager(disable=["peft"])  # as if tune-plugin-peft were not installed
    data = recipe_dict(tmp_path, adapt=[{"method": "lora", "r": 8}])
    with pytest.raises(TuneError) as err:
        load_recipe(write_recipe(tmp_path, data), plugins=pm)
    assert "tune-plugin-peft" in str(err.value) and "[[adapt]] method" in str(err.value)
    with pytest.raises(TuneError) as err:
        pm.backend("optimizer", "adamm")
    assert "Did you mean 'adamw'?" in str(err.value)


def test_loader_scoped_provider_wins_only_for_its_loader(make_dist):
    general = make_dist("tune-plugin-gen", "1.0", provider("adapter", "scoped_lora"))
    special = make_dist("tune-plugin-spec", "1.0", provider("adapter", "scoped_lora", "fastloader"))
    pm = get_plugin_manager()  # not a conflict: different scopes
    assert pm.backend("adapter", "scoped_lora", loader="fastloader").plugin == special
    assert pm.backend("adapter", "scoped_lora", loader="transformers").plugin == general
    listing = {i.name: i.provides for i in pm.infos.values()}
    assert listing[special] == ["adapter:scoped_lora@fastloader"]


def test_misspelled_hook_marks_the_plugin_broken(make_dist):
    src = (
        provider("metric", "typo_metric") + "\n@hookimpl\ndef tune_evalute(names):\n    return {}\n"
    )
    name = make_dist("tune-plugin-typo", "0.1", src)
    pm = get_plugin_manager()
    assert "unknown hook tune_evalute" in pm.infos[name].status
    assert "Did you mean 'tune_evaluate'?" in pm.infos[name].status
    with pytest.raises(TuneError):
        pm.backend("metric", "typo_metric")


def test_disable_autoload_and_dash_p(make_dist, monkeypatch):
    name = make_dist("tune-plugin-auto", "1.0", provider("metric", "auto_metric"))
    monkeypatch.setenv("TUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert name not in pm.infos and "transformers" in pm.infos
    pm = get_plugin_manager(extra_modules=["tests.core.hook_plugin"])
    assert pm.backend("optimizer", "sgd").plugin == "tests.core.hook_plugin"
    monkeypatch.delenv("TUNE_DISABLE_PLUGIN_AUTOLOAD")
    pm = get_plugin_manager(disable=[name])
    assert pm.infos[name].status == "disabled"
    with pytest.raises(TuneError):
        pm.backend("metric", "auto_metric")


def test_plugins_list_cli(make_dist):
    make_dist("tune-plugin-cli", "3.1", provider("metric", "cli_metric"), ep_name="cliplug")
    out = run_cli("plugins", "list")
    assert out.returncode == 0, out.stderr
    for column in ("NAME", "DISTRIBUTION", "VERSION", "PROVIDES", "HOOKS", "STATUS"):
        assert column in out.stdout
    data = {row["name"]: row for row in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert data["cliplug"]["distribution"] == "tune-plugin-cli"
    assert data["cliplug"]["provides"] == ["metric:cli_metric"]
    disabled = json.loads(run_cli("-p", "no:cliplug", "plugins", "list", "--json").stdout)
    assert {r["name"]: r["status"] for r in disabled}["cliplug"] == "disabled"


def test_a_backend_without_its_required_hook_is_a_startup_error(make_dist):
    name = make_dist("tune-plugin-half", "0.3", provider("loader", "halfload", hooks=False))
    with pytest.raises(TuneError) as err:
        get_plugin_manager()
    text = str(err.value)
    assert "declares loader 'halfload'" in text and "tune_load_model" in text
    assert "tune-plugin-half 0.3" in text and f"-p no:{name}" in text
    listing = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert listing[name]["status"].startswith("error: plugin")
    assert get_plugin_manager(disable=[name])  # disabling it is the way out


def test_plugin_api_range_is_checked(make_dist):
    ok = make_dist("tune-plugin-fits", "1.0", 'TUNE_API = ">=2,<3"\n' + provider("metric", "m1"))
    old = make_dist("tune-plugin-old", "1.0", 'TUNE_API = ">=1,<2"\n' + provider("metric", "m0"))
    pm = get_plugin_manager()
    assert pm.infos[ok].status == "ok"
    assert pm.infos[old].status.startswith("incompatible: built for tune plugin API >=1,<2")
    with pytest.raises(TuneError, match="Plugins that failed to load.*incompatible"):
        pm.backend("metric", "m0")


def test_a_backend_whose_library_is_missing_is_listed_and_refused_only_where_used(
    make_dist, tmp_path
):
    src = provider("optimizer", "needs_lib").replace(
        'provide.optimizer("needs_lib", S)',
        'provide.optimizer("needs_lib", S, requires=("no_such_module_xyz",))',
    )
    name = make_dist("tune-plugin-needy", "0.2", src)
    pm = get_plugin_manager()
    assert pm.infos[name].status == (
        "no_such_module_xyz not installed: pip install tune-plugin-needy"
    )
    load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path)), plugins=pm)  # not used: fine
    with pytest.raises(TuneError) as err:
        load_recipe(
            write_recipe(tmp_path, recipe_dict(tmp_path, optimizer={"name": "needs_lib"})),
            plugins=pm,
        )
    assert "no_such_module_xyz" in str(err.value) and "pip install tune-plugin-needy" in str(
        err.value
    )
