"""Data source `files` (the default): local .jsonl, .json, .csv, .parquet or saved datasets.

Relative paths are read from the recipe's folder first, then from the working directory. The
cache fingerprint is the files' content; streaming reads JSON-lines files from a byte offset.
"""

from __future__ import annotations

from pathlib import Path

from tune.plugin import DataSource, Settings, TuneError, files, hookimpl


class FilesSettings(Settings):
    """The files source takes no keys."""


class FileSource(DataSource):
    def paths(self, specs: list[str], where: str) -> list[Path]:
        return [files.resolve_input(spec, self.ctx.recipe.path, where) for spec in specs]

    def check(self, specs, where):
        paths = self.paths(specs, where)
        return f"{len(paths)} file{'s' if len(paths) != 1 else ''}"

    def rows(self, specs, where):
        for path in self.paths(specs, where):
            yield from files.iter_rows(path)

    def fingerprint(self, specs, where):
        return ",".join(files.file_digest(p) for p in self.paths(specs, where))

    def stream(self, specs, where, start):
        paths = self.paths(specs, where)
        for path in paths:
            if path.suffix.lower() != ".jsonl":
                raise TuneError(
                    f"streaming reads .jsonl files, not '{path.suffix or path.name}'.",
                    where=where,
                    fix="convert the data to JSON lines, or set streaming = false.",
                )
        return files.stream_jsonl(paths, start)


@hookimpl
def tune_provide(provide):
    provide.data_source(
        "files", FilesSettings, doc="local .jsonl/.json/.csv/.parquet files", build=FileSource
    )
