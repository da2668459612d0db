"""A run folder owns only what it wrote: what its files say is checked, never followed out.

Each test is one attack from a hostile or damaged run folder, or a file of the user's that
tune must not lose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tune.testing import recipe_dict, run, run_cli, write_plugin, write_recipe

from tests.security.conftest import cli, one_paragraph


def _marker(out: Path) -> dict:
    return json.loads((out / ".tune-run.json").read_text())


def test_a_marker_naming_paths_outside_the_run_deletes_nothing_there(victim_run, tmp_path, capsys):
    out, recipe = victim_run
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine too")
    mark = _marker(out)
    mark["entries"] += ["../victim/important.txt", str(elsewhere), "../victim"]
    (out / ".tune-run.json").write_text(json.dumps(mark))
    code, text = cli(capsys, "run", str(recipe), "--overwrite")
    assert code == 0, text
    assert (victim / "important.txt").read_text() == "mine"
    assert (elsewhere / "keep.txt").read_text() == "mine too"


def test_a_checkpoints_link_to_another_folder_is_refused_and_nothing_there_is_deleted(
    victim_run, tmp_path, capsys
):
    out, recipe = victim_run
    other = tmp_path / "other"
    (other / "step-1").mkdir(parents=True)
    (other / "step-1" / "weights.bin").write_text("a user's weights")
    import shutil

    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").symlink_to(other)
    code, text = cli(capsys, "run", str(recipe), "--overwrite")
    assert code == 2 and one_paragraph(text), text
    assert "checkpoints" in text
    assert (other / "step-1" / "weights.bin").read_text() == "a user's weights"
    assert (out / "final").is_dir()  # refused before anything of the run was removed


def test_linked_recipe_and_summary_are_replaced_not_written_through(victim_run, tmp_path, capsys):
    out, recipe = victim_run
    targets = {}
    for name in ("recipe.toml", "summary.json"):
        target = tmp_path / f"outside-{name}"
        target.write_text("the user's file")
        (out / name).unlink()
        (out / name).symlink_to(target)
        targets[name] = target
    code, text = cli(capsys, "run", str(recipe), "--resume", "-o", "train.max_steps=5",
                     "--resume-changed")  # fmt: skip
    assert code == 2 or code == 0, text
    for target in targets.values():
        assert target.read_text() == "the user's file"


def test_overwrite_keeps_a_users_samples_file_the_run_never_wrote(victim_run, capsys):
    out, recipe = victim_run
    assert "samples.jsonl" not in _marker(out)["entries"]  # this run generated no samples
    (out / "samples.jsonl").write_text("my notes\n")
    code, text = cli(capsys, "run", str(recipe), "--overwrite")
    assert code == 2 and "samples.jsonl" in text, text
    assert (out / "samples.jsonl").read_text() == "my notes\n"


def test_overwrite_refuses_a_checkpoint_holding_a_users_file(victim_run, capsys):
    out, recipe = victim_run
    mine = out / "checkpoints" / "step-2" / "notes.txt"
    mine.write_text("mine")
    code, text = cli(capsys, "run", str(recipe), "--overwrite")
    assert code == 2 and "checkpoints/step-2/notes.txt" in text, text
    assert mine.read_text() == "mine"
    assert (out / "checkpoints" / "step-4").is_dir()  # nothing was half-deleted


SIGTERM_IN_FINAL_SAVE = """
import os, signal
from tune.plugin import hookimpl

@hookimpl
def tune_save_extras(model, path, ctx):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while final/ is being written
"""


def test_sigterm_during_the_final_save_finishes_it_and_resume_finds_the_run_complete(tmp_path):
    env = write_plugin(tmp_path, "term_plugin", SIGTERM_IN_FINAL_SAVE)
    data = recipe_dict(tmp_path, train={"max_steps": 2})
    path = write_recipe(tmp_path, data)
    res = run_cli("run", str(path), "-p", "term_plugin", env=env)
    assert res.returncode == 3, res.stdout + res.stderr
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file() and (final / "recipe.toml").is_file()
    again = run_cli("run", str(path), "--resume")
    assert again.returncode == 2 and "finished" in again.stderr, again.stderr


def test_a_damaged_newest_checkpoint_without_manifest_falls_back_to_the_intact_one(
    victim_run, capsys
):
    out, recipe = victim_run
    newest = out / "checkpoints" / "step-4"
    (newest / "manifest.json").unlink()
    (newest / "optimizer.pt").write_bytes(b"garbage")
    code, text = cli(capsys, "run", str(recipe), "--resume", "-o", "train.max_steps=5",
                     "--resume-changed")  # fmt: skip
    assert code == 0, text
    assert "resuming from step-2" in text
    assert "--overwrite" not in text


def test_replaced_base_weights_are_noticed_on_resume(tmp_path, capsys):
    import shutil

    from tune.testing import tiny_model

    base = tmp_path / "base"
    shutil.copytree(tiny_model("tiny-llama"), base)
    data = recipe_dict(tmp_path, model={"path": str(base)}, train={"max_steps": 2, "save_every": 1})
    path = write_recipe(tmp_path, data)
    run(path)
    shutil.rmtree(base)
    shutil.copytree(tiny_model("tiny-llama", seed=1), base)  # same shapes, other weights
    code, text = cli(capsys, "run", str(path), "--resume")
    assert code == 2 and "model.weights" in text, text


def test_a_recipe_string_with_control_characters_is_saved_as_valid_toml(tmp_path):
    from tune.recipe import dump_toml
    from tune.recipe.toml import tomllib

    data = recipe_dict(tmp_path, generate={"prompts": ["bell\x07 tab\t esc\x1b[0m nul\x00"]})
    text = dump_toml(data)
    assert tomllib.loads(text)["generate"]["prompts"] == data["generate"]["prompts"]


LOCK_STRESS = """
import os, sys, time
from pathlib import Path
from tune.train.rundir import RunDir
from tune.errors import TuneError

folder, counter = Path(sys.argv[1]), Path(sys.argv[2])
held = 0
for _ in range(int(sys.argv[3])):
    owner = RunDir(folder, "stress")
    try:
        owner.lock()
    except TuneError:
        continue
    fd = os.open(counter, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    os.write(fd, b"+")
    inside = os.pread(fd, 1 << 20, 0).count(b"+") - os.pread(fd, 1 << 20, 0).count(b"-")
    if inside != 1:
        print("TWO HOLDERS", inside)
    os.write(fd, b"-")
    os.close(fd)
    owner.release()
    held += 1
print("held", held)
"""


def test_the_lock_is_never_held_twice_under_contention(tmp_path):
    script = tmp_path / "stress.py"
    script.write_text(LOCK_STRESS)
    folder = tmp_path / "run"
    folder.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(folder), str(tmp_path / "counter"), "400"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert not any("TWO HOLDERS" in o for o in outputs), outputs
    assert sum(int(o.split()[-1]) for o in outputs) > 0
    assert (folder / ".tune.lock").exists()  # never deleted: see tune.train.rundir


def test_a_tilde_output_dir_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = recipe_dict(tmp_path, train={"max_steps": 1, "output_dir": "~/runs/x"})
    run(write_recipe(tmp_path, data))
    assert (tmp_path / "home" / "runs" / "x" / "final").is_dir()
    assert not (tmp_path / "~").exists()


def test_output_dir_that_is_a_file_or_cannot_be_created_is_one_paragraph(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    data = recipe_dict(tmp_path, train={"max_steps": 1, "output_dir": str(tmp_path / "afile")})
    code, text = cli(capsys, "run", str(write_recipe(tmp_path, data)))
    assert code == 2 and one_paragraph(text) and "is a file" in text, text
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to test here
            return
        data["train"]["output_dir"] = str(locked / "sub")
        code, text = cli(capsys, "run", str(write_recipe(tmp_path, data, "ro.toml")))
        assert code == 2 and one_paragraph(text) and "cannot create" in text, text
    finally:
        locked.chmod(0o700)


def test_output_dir_root_is_refused_at_validation(tmp_path, capsys):
    data = recipe_dict(tmp_path, train={"output_dir": "/"})
    code, text = cli(capsys, "validate", str(write_recipe(tmp_path, data)))
    assert code == 2 and "filesystem root" in text, text


def test_merge_out_refuses_a_file_and_never_removes_a_users_tmp_folder(
    victim_run, tmp_path, capsys
):
    out, _ = victim_run
    (tmp_path / "afile").write_text("x")
    code, text = cli(capsys, "merge", str(out), "--out", str(tmp_path / "afile"))
    assert code == 2 and one_paragraph(text), text
    mine = tmp_path / ".tmp-m2"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    cli(capsys, "merge", str(out), "--out", str(tmp_path / "m2"))
    assert (mine / "keep.txt").read_text() == "mine"
