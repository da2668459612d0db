"""tune: a small, extensible fine-tuning trainer; backends are plugins chosen by a TOML recipe."""

from tune.errors import TuneError

__version__ = "0.1.0"
__all__ = ["TuneError", "__version__"]
