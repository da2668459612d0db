"""tune: a small, extensible fine-tuning trainer; backends are plugins chosen by a TOML recipe.

Plugins import from `tune.plugin` (and test with `tune.testing`); every other module is private.
"""

from tune.errors import TuneError

__version__ = "0.1.0"
# The plugin API this tune implements. A plugin may declare the range it was built for with a
# module attribute, e.g. `TUNE_API = ">=2,<3"`; outside it, the plugin is not loaded.
PLUGIN_API = "2.0"
__all__ = ["PLUGIN_API", "TuneError", "__version__"]
