"""Data source `files` (the default): local .jsonl, .json, .csv, .parquet or saved datasets.

Relative paths are read from the recipe's folder first, then from the working directory. The
cache fingerprint is the files' content; streaming reads JSON-lines files from a byte offset.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from tune.contract.source import DataSource
from tune.data.files import iter_rows, resolve_input, stream_jsonl
from tune.errors import TuneError
from tune.registry.hookspecs import hookimpl


class FilesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSource(DataSource):
    def paths(self, specs: list[str], where: str) -> list[Path]:
        return [resolve_input(spec, self.ctx.recipe.path, where) for spec in specs]

    def check(self, specs, where):
        paths = self.paths(specs, where)
        return f"{len(paths)} file{'s' if len(paths) != 1 else ''}"

    def rows(self, specs, where):
        for path in self.paths(specs, where):
            yield from iter_rows(path)

    def fingerprint(self, specs, where):
        from tune.data.cache import file_digest

        return ",".join(file_digest(p) for p in self.paths(specs, where))

    def stream(self, specs, where, start):
        paths = self.paths(specs, where)
        for path in paths:
            if path.suffix.lower() != ".jsonl":
                raise TuneError(
                    f"streaming reads .jsonl files, not '{path.suffix or path.name}'.",
                    where=where,
                    fix="convert the data to JSON lines, or set streaming = false.",
                )
        return stream_jsonl(paths, start)


@hookimpl
def tune_provide(provide):
    provide.data_source("files", FilesSettings, doc="local .jsonl/.json/.csv/.parquet files")


@hookimpl
def tune_open_data_source(settings, ctx):
    return FileSource(settings, ctx)
