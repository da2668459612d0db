"""Data source `hub`: a dataset on the Hugging Face Hub (or laid out like one on disk).

`train = "hf://org/name"` (or `[data.source] name = "hub"` with `train = "org/name"`) reads the
dataset with `datasets.load_dataset`: its README `configs:` block, data files, splits. A local
folder with the Hub's layout is read through the same code path, which is how a downloaded copy
(`huggingface-cli download --repo-type dataset org/name --local-dir DIR`) is used offline.
The token comes from `HF_TOKEN` (read by huggingface_hub itself) and is never written anywhere.
Imports `datasets` only when rows are read: `tune validate` says what it would download and
reads nothing from the network.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field
from tune.plugin import DataSource, Settings, TuneError, hookimpl

TUNE_API = ">=2,<3"
SCHEME = "hf://"
_SLICE = re.compile(
    r"^(?P<split>[\w.-]+)(\[(?P<start>-?\d*)(?P<pct1>%?):(?P<stop>-?\d*)(?P<pct2>%?)\])?$"
)


class HubSettings(Settings):
    """Keys of `[data.source]` (or `[[data.mix]] source`) when name = "hub"."""

    subset: str | None = Field(None, description="the dataset's config (subset) name")
    config: str | None = Field(None, description="alias of subset")
    split: str = Field("train", description='split of `train`, with slicing: "train[:5%]"')
    eval_split: str = Field("validation", description="split of `eval`, with slicing")
    revision: str | None = Field(None, description="branch, tag or commit to read")
    data_files: str | list[str] | dict[str, Any] | None = Field(
        None, description="data files to read instead of the dataset's configs"
    )
    streaming: bool = Field(
        False, description="read rows lazily over the network (no full download)"
    )


def dataset_id(spec: str) -> str:
    return spec[len(SCHEME) :] if spec.startswith(SCHEME) else spec


BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def local_dir(spec: str, recipe_path: Path) -> Path | None:
    """A local folder laid out like a Hub dataset repository, or a local data file (read with
    datasets' builder for its type), or None (a Hub id)."""
    name = dataset_id(spec)
    for base in (recipe_path.parent, Path.cwd()):
        candidate = (base / name).expanduser()
        if candidate.is_dir() or (candidate.is_file() and candidate.suffix.lower() in BUILDERS):
            return candidate
    return None


class HubSource(DataSource):
    """Rows of one split of each named dataset, in order."""

    def _split(self, where: str) -> str:
        return self.settings.eval_split if where.endswith(" eval") else self.settings.split

    def describe(self, spec: str, where: str) -> str:
        s = self.settings
        parts = [dataset_id(spec)]
        if s.subset or s.config:
            parts.append(f"subset {s.subset or s.config}")
        parts.append(f"split {self._split(where)}")
        if s.revision:
            parts.append(f"revision {s.revision}")
        return ", ".join(parts)

    def downloads(self, specs: list[str], where: str) -> list[str]:
        """What reading these specs would fetch from the Hub (nothing for local folders)."""
        return [
            self.describe(spec, where)
            for spec in specs
            if local_dir(spec, self.ctx.recipe.path) is None
        ]

    def check(self, specs, where):
        for spec in specs:
            name = dataset_id(spec)
            local = local_dir(spec, self.ctx.recipe.path)
            if local is None and (name.startswith((".", "/", "~")) or name.count("/") > 1):
                raise TuneError(
                    f"'{spec}' is neither a local dataset folder nor a Hub dataset id.",
                    where=where,
                    fix='name a Hub dataset as "hf://org/name", or a folder laid out like one.',
                )
            _parse_split(self._split(where), self.settings.streaming, where)
        remote = self.downloads(specs, where)
        if remote:
            return "will download from the Hugging Face Hub: " + "; ".join(remote)
        return f"{len(specs)} local dataset{'s' if len(specs) != 1 else ''}"

    def _load(self, spec: str, where: str, streaming: bool) -> Any:
        import datasets

        s = self.settings
        local = local_dir(spec, self.ctx.recipe.path)
        name = dataset_id(spec)
        split, start, stop = _parse_split(self._split(where), streaming, where)
        path, config, files = str(local) if local else name, s.subset or s.config, s.data_files
        if local is not None and local.is_file():  # one local file: split "train" of its type
            path, config, files = BUILDERS[local.suffix.lower()], None, str(local)
        try:
            ds = datasets.load_dataset(
                path,
                config,
                split=self._split(where) if not streaming else split,
                revision=s.revision,
                data_files=files,
                streaming=streaming,
            )
        except Exception as exc:  # network, auth, missing split/config: all one paragraph
            raise _load_error(exc, spec, local, self._split(where), where) from None
        if streaming and (start or stop is not None):
            ds = ds.skip(start) if start else ds
            ds = ds.take(stop - start) if stop is not None else ds
        return ds

    def rows(self, specs, where):
        for spec in specs:
            ds = self._load(spec, where, self.settings.streaming)
            label = f"{dataset_id(spec)}[{self._split(where)}]"
            for i, row in enumerate(ds):
                yield f"{label}: row {i}", row

    def fingerprint(self, specs, where):
        parts = [self.settings.model_dump_json()]
        for spec in specs:
            local = local_dir(spec, self.ctx.recipe.path)
            if self.settings.streaming:
                parts.append(dataset_id(spec))
            else:  # datasets' own fingerprint of the prepared split: changes with its content
                parts.append(self._load(spec, where, False)._fingerprint)
            if local is not None:
                parts.append(str(local.resolve()))
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def stream(self, specs, where, start) -> Iterator[tuple[dict[str, Any], str, dict]]:
        first, skip = (start["spec"], start["row"]) if start else (0, 0)
        for index in range(first, len(specs)):
            spec = specs[index]
            ds = self._load(spec, where, self.settings.streaming)
            offset = skip if index == first else 0
            if offset:
                ds = ds.skip(offset)
            label = f"{dataset_id(spec)}[{self._split(where)}]"
            for i, row in enumerate(ds, offset):
                yield {"spec": index, "row": i}, f"{label}: row {i}", row


def _parse_split(text: str, streaming: bool, where: str) -> tuple[str, int, int | None]:
    """(split, start, stop) for streaming reads; percent slices need the split's length."""
    m = _SLICE.match(text.replace(" ", ""))
    if not m:
        raise TuneError(
            f"split '{text}' is not a split name with an optional slice.",
            where=where,
            fix='write e.g. split = "train", "train[:1000]", "train[10%:]" or "test[:5%]".',
        )
    if m["start"] is None and m["stop"] is None:
        return m["split"], 0, None
    percent = bool(m["pct1"] or m["pct2"])
    if streaming and (percent or m["start"].startswith("-") or m["stop"].startswith("-")):
        raise TuneError(
            f"split '{text}': a streamed dataset has no known length, so it cannot be sliced "
            "by percent or from the end.",
            where=where,
            fix='slice by row numbers ("train[:1000]"), or set streaming = false in [data.source].',
        )
    return m["split"], int(m["start"] or 0), int(m["stop"]) if m["stop"] else None


def _load_error(exc: Exception, spec: str, local: Path | None, split: str, where: str):
    name = dataset_id(spec)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if local is not None:
        return TuneError(
            f"cannot read the dataset folder {local} (split '{split}'): {first}",
            where=where,
            fix="check its README.md `configs:` block and data files, the split name, or "
            "[data.source] data_files.",
        )
    return TuneError(
        f"cannot load dataset '{name}' (split '{split}') from the Hugging Face Hub: {first} "
        "(no network, a gated or private dataset without HF_TOKEN, or a wrong name/split).",
        where=where,
        fix=f"check the network and the name; for a gated dataset accept its terms and set "
        f"HF_TOKEN. Or use a local copy: `huggingface-cli download --repo-type dataset {name} "
        f'--local-dir DIR`, then set train = "DIR" with [data.source] name = "hub" (the same '
        "layout is read offline), or set HF_DATASETS_OFFLINE=1 to use datasets' cache.",
    )


@hookimpl
def tune_provide(provide):
    doc = "Hugging Face Hub datasets (hf://org/name), through datasets.load_dataset"
    provide.data_source(
        "hub", HubSettings, doc=doc, requires=("datasets",), schemes=("hf",), build=HubSource
    )
