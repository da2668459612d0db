"""The public plugin API of tune: everything a plugin may import, in one place.

    from tune.plugin import hookimpl, Settings, TuneError, ...

Only this module and `tune.testing` are public. Every other `tune.*` module is private: it may
change in any release. What is here follows the plugin API version `API_VERSION` (semver: a
minor version adds, a major version may break); a plugin may declare the range it was built
for with a module attribute `TUNE_API = ">=2,<3"`, and is not loaded outside it.

Besides the names below, six namespaces group helpers that plugins of one kind share:
`chat` (messages, templates, assistant spans: formats), `files` (reading rows, resolving
paths: data sources), `model_files` (checking a model folder's config, safetensors, tokenizer
and GGUF files before a library reads them: loaders), `weights` (reading a shard of a
safetensors checkpoint: strategies), `processes` (joining a multi-process run: strategies),
`memory` (what `estimate=` functions receive and return: `Plan`, `AdapterSize`,
`OptimizerState`, `Sharding`; every kind).
Importing this module imports no torch.
"""

from __future__ import annotations

from tune import PLUGIN_API as API_VERSION
from tune import __version__
from tune.contract import memory
from tune.contract.capabilities import Capabilities
from tune.contract.collectives import Collectives
from tune.contract.context import RunContext, World
from tune.contract.evaluation import EvalData
from tune.contract.exporter import Check, Exporter
from tune.contract.format import DataFormat
from tune.contract.loading import Load, Loaded, keep_trainable
from tune.contract.objective import LossOutput, Objective, RunData
from tune.contract.quantization import Quantization
from tune.contract.reward import Reward
from tune.contract.rollout import Completions, Rollout, Sampling
from tune.contract.settings import (
    AdamStyleSettings,
    MultiProcessSettings,
    OptimizerSettings,
    Settings,
)
from tune.contract.source import DataSource
from tune.contract.strategy import Strategy
from tune.contract.tracker import RunInfo, Tracker
from tune.data import chat, files
from tune.data.batching import collate_packed
from tune.data.examples import IGNORE, collate, target_count
from tune.errors import TuneError, did_you_mean
from tune.machine import distributed as processes
from tune.machine.devices import resolve_dtype, resolve_precision
from tune.model import checks as model_files
from tune.model import weights
from tune.model.generation import greedy_generate, text_prompt
from tune.recipe import Recipe, Selected
from tune.registry.hookspecs import hookimpl
from tune.registry.kinds import LM_EXAMPLES
from tune.train.chunked_loss import (
    NextTokenTerms,
    next_token_loss,
    next_token_terms,
    token_logprobs,
)

__all__ = [
    # the plugin API version, and tune's
    "API_VERSION",
    "__version__",
    # declaring backends and implementing hooks
    "hookimpl",
    "Settings",
    "OptimizerSettings",
    "AdamStyleSettings",
    "MultiProcessSettings",
    "Capabilities",
    # what hooks receive
    "RunContext",
    "World",
    "Collectives",
    "Recipe",
    "Selected",
    "EvalData",
    # user mistakes
    "TuneError",
    "did_you_mean",
    # loaders, quantization, adapters, exporters
    "Load",
    "Loaded",
    "keep_trainable",
    "Quantization",
    "Exporter",
    "Check",
    # data: sources and formats
    "DataSource",
    "DataFormat",
    "LM_EXAMPLES",
    "IGNORE",
    "target_count",
    "collate",
    "collate_packed",
    "chat",
    "files",
    "model_files",
    # training: objectives, strategies, trackers
    "Objective",
    "LossOutput",
    "RunData",
    "token_logprobs",
    "next_token_loss",
    "next_token_terms",
    "NextTokenTerms",
    "Strategy",
    "weights",
    "processes",
    "Tracker",
    "RunInfo",
    # online RL: rewards and the rollout engine
    "Reward",
    "Rollout",
    "Sampling",
    "Completions",
    # memory estimates
    "memory",
    # devices and generation
    "resolve_precision",
    "resolve_dtype",
    "greedy_generate",
    "text_prompt",
]
