"""The public plugin API of tune: everything a plugin may import, in one place.

    from tune.plugin import hookimpl, Settings, TuneError, ...

Only this module and `tune.testing` are public. Every other `tune.*` module is private: it may
change in any release. What is here follows the plugin API version `API_VERSION` (semver: a
minor version adds, a major version may break); a plugin may declare the range it was built
for with a module attribute `TUNE_API = ">=1,<2"`, and is not loaded outside it.
Importing this module imports no torch.
"""

from __future__ import annotations

from tune import PLUGIN_API as API_VERSION
from tune import __version__
from tune.contract.context import RunContext, World
from tune.contract.format import DataFormat
from tune.contract.objective import LossOutput, Objective, RunData
from tune.contract.settings import (
    AdamStyleSettings,
    MultiProcessSettings,
    OptimizerSettings,
    Settings,
)
from tune.contract.source import DataSource
from tune.contract.strategy import Strategy, load_trainable, trainable_state
from tune.contract.tracker import RunInfo, Tracker
from tune.data.batching import collate_packed
from tune.data.examples import IGNORE, Examples, collate, target_count
from tune.data.files import resolve_input
from tune.data.templates import ROLES as CHAT_ROLES
from tune.data.templates import use_template as use_chat_template
from tune.errors import TuneError, did_you_mean
from tune.machine.devices import auto_device, resolve_dtype, resolve_precision
from tune.machine.distributed import EnvWorld, env_world, join_world, start_process_group
from tune.model.generation import greedy_generate, text_prompt
from tune.model.weights import (
    FileTensor,
    checkpoint_index,
    file_tensor,
    read_elements,
    weight_files,
)
from tune.recipe import Recipe, Selected
from tune.registry.hookspecs import hookimpl
from tune.registry.kinds import KINDS, LM_EXAMPLES
from tune.train.chunked_loss import token_logprobs
from tune.train.evaluation import EvalData

__all__ = [
    # the plugin API version, and tune's
    "API_VERSION",
    "__version__",
    # declaring and implementing hooks
    "hookimpl",
    "KINDS",
    "Settings",
    "OptimizerSettings",
    "AdamStyleSettings",
    "MultiProcessSettings",
    # what hooks receive
    "RunContext",
    "World",
    "Recipe",
    "Selected",
    "EvalData",
    # user mistakes
    "TuneError",
    "did_you_mean",
    # data: sources and formats
    "DataSource",
    "DataFormat",
    "Examples",
    "LM_EXAMPLES",
    "IGNORE",
    "target_count",
    "collate",
    "collate_packed",
    "resolve_input",
    "CHAT_ROLES",
    "use_chat_template",
    # training: objectives, strategies, trackers
    "Objective",
    "LossOutput",
    "RunData",
    "token_logprobs",
    "Strategy",
    "trainable_state",
    "load_trainable",
    "FileTensor",
    "checkpoint_index",
    "file_tensor",
    "read_elements",
    "weight_files",
    "Tracker",
    "RunInfo",
    # devices, processes, generation
    "auto_device",
    "resolve_precision",
    "resolve_dtype",
    "EnvWorld",
    "env_world",
    "join_world",
    "start_process_group",
    "greedy_generate",
    "text_prompt",
]
