"""`tune push`: a run to a Hugging Face Hub repository, with a generated model card.

Everything to upload is staged in one temporary folder (the adapter or the merged model, the
optional exports (`--export FORMAT[:QUANT]`, any exporter plugin), the loss plot, the recipe, README.md), then sent in
one `upload_folder` commit. `--dry-run` stages the same folder and lists it, so the list is
exactly what would go. The token comes from HF_TOKEN or huggingface_hub's login cache and is
handed to huggingface_hub only: never printed, logged or written.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tune.errors import TuneError

WHERE = "tune push"


@dataclass
class PushResult:
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in the repo, bytes)
    url: str | None = None


def hub_token() -> str:
    """HF_TOKEN, else the token `hf auth login` cached; a TuneError when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise TuneError(
            "no Hugging Face token: tune push needs one with write access.",
            where=WHERE,
            fix="set HF_TOKEN in the environment, or run `hf auth login` once "
            "(tune reads the token; it never writes or prints it).",
        )
    return token


def _copy_tree(src: Path, dst: Path, skip: set[str] = frozenset()) -> None:
    for path in sorted(src.iterdir()):
        if path.name in skip or path.name.startswith("."):
            continue
        target = dst / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)


def parse_export(spec: str) -> tuple[str, str | None]:
    """`gguf:q8_0` -> ("gguf", "q8_0"); `ollama` -> ("ollama", None)."""
    fmt, _, quant = spec.partition(":")
    if not fmt:
        raise TuneError(
            f"--export '{spec}' names no format.",
            where=WHERE,
            fix="write --export FORMAT[:QUANT], e.g. --export gguf:q8_0 (see `tune plugins list`).",
        )
    return fmt, quant or None


def stage(
    source: Path,
    repo_id: str,
    pm,
    folder: Path,
    *,
    merged: bool | None,
    exports: list[str] = (),
    precision: str,
    online: bool,
    trust_remote_code: bool = False,
) -> None:
    """Write into `folder` every file the repository gets."""
    from tune.trained.export import export, select_exporter
    from tune.trained.merge import locate, plain_model
    from tune.trained.modelcard import base_license, model_card

    wanted = [parse_export(spec) for spec in exports]
    for fmt, quant in wanted:
        select_exporter(pm, fmt, quant, [])  # a wrong format or quant fails before any work
    artifact, _, recipe = locate(source, pm, trust_remote_code=trust_remote_code)
    run_dir = artifact.parent if artifact.name == "final" else artifact
    has_adapter = bool(recipe.adapt) and not (artifact / "config.json").is_file()
    if merged is False and not has_adapter:
        raise TuneError(
            "--adapter: this run saved a full model, there is no adapter to upload.",
            where=str(artifact),
            fix="leave out --adapter (the full model is uploaded).",
        )
    adapter = has_adapter and not merged
    upload = folder / "upload"
    upload.mkdir(parents=True)
    if adapter:
        _copy_tree(artifact, upload, skip={"README.md"})
    else:
        model_dir, _ = plain_model(source, pm, precision, folder / "work", trust_remote_code)
        _copy_tree(model_dir, upload, skip={"README.md"})
    if not (upload / "recipe.toml").exists():
        from tune.recipe import dump_toml

        (upload / "recipe.toml").write_text(dump_toml(recipe.raw), encoding="utf-8")
    exported = []
    for fmt, quant in wanted:
        written = export(source, fmt, upload, pm, quant=quant, trust_remote_code=trust_remote_code)
        exported.append((fmt, quant, [p.name for p in written]))
    if (run_dir / "loss.png").is_file():
        shutil.copy2(run_dir / "loss.png", upload / "loss.png")
    (upload / ".tune-export.json").unlink(missing_ok=True)  # tune's own record, not the model's
    files = sorted(p.relative_to(upload).as_posix() for p in upload.rglob("*") if p.is_file())
    card = model_card(
        recipe,
        run_dir,
        repo_id=repo_id,
        adapter=adapter,
        files=["README.md", *files],
        licence=base_license(str(recipe.model.path), online),
        exports=exported,
    )
    (upload / "README.md").write_text(card, encoding="utf-8")


def push(
    source: Path,
    repo_id: str,
    pm,
    *,
    private: bool = False,
    merged: bool | None = None,
    exports: list[str] = (),
    dry_run: bool = False,
    precision: str = "bf16",
    trust_remote_code: bool = False,
) -> PushResult:
    """Stage the files and upload them in one commit (or, with `dry_run`, only list them)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise TuneError(
            f"'{repo_id}' is not a Hub repository id: {exc}",
            where=WHERE,
            fix="write it as owner/name, e.g. my-user/my-model.",
        ) from None
    token = None if dry_run else hub_token()  # before any work
    folder = Path(tempfile.mkdtemp(prefix="tune-push-"))
    try:
        stage(
            source,
            repo_id,
            pm,
            folder,
            merged=merged,
            exports=list(exports),
            precision=precision,
            online=not dry_run,
            trust_remote_code=trust_remote_code,
        )
        upload = folder / "upload"
        files = sorted(
            (p.relative_to(upload).as_posix(), p.stat().st_size)
            for p in upload.rglob("*")
            if p.is_file()
        )
        result = PushResult(files)
        if not dry_run:
            result.url = _upload(upload, repo_id, private, token)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _upload(folder: Path, repo_id: str, private: bool, token: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload with tune push"
        )
    except Exception as exc:
        if not _network_error(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(
            f"could not upload to the Hub repository '{repo_id}' ({type(exc).__name__}: {reason}).",
            where=WHERE,
            fix="check the network (HF_HUB_OFFLINE must be unset), that the token has write "
            "access to the owner, and retry; `--dry-run` lists the files without uploading.",
        ) from None
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo_id}")


def _network_error(exc: Exception) -> bool:
    """The Hub refused or could not be reached (not a bug): HTTP client and Hub errors."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, HfHubHTTPError | OfflineModeIsEnabled | OSError):
        return True
    # huggingface_hub's HTTP client (httpx, or its fork) raises its own HTTPError family
    return any(
        c.__name__ == "HTTPError" and c.__module__.split(".")[0].startswith("httpx")
        for c in type(exc).__mro__
    )
