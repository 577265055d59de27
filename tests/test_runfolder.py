"""One run per --out, outputs that never remove foreign files, resumes that are exact or refused
(issue 15, items 6 and 7). Each test is the attack."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from spikebridge.config import PipelineConfig
from spikebridge.errors import ConfigError, OutputError
from spikebridge.train.runfolder import (LOCK, MANIFEST, _alive, _process_start, check_run_folder, claim_run_folder,
                                         config_differences)
from spikebridge.utils import temp_name

HOLDER = """
import sys
from spikebridge.train.runfolder import claim_run_folder
folder = claim_run_folder(sys.argv[1], command="pretrain", config={"ann": {"lr": 0.1}}, resume=False,
                          overwrite=False, is_main=True)
print("claimed", flush=True)
sys.stdin.readline()
folder.release()
"""
CONFIG = {"ann": {"lr": 0.1}}


def claim(out, *, command="pretrain", config=CONFIG, resume=False, overwrite=False):
    return claim_run_folder(out, command=command, config=config, resume=resume, overwrite=overwrite, is_main=True)


def start_holder(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_run(out: Path, *, command="pretrain", config=CONFIG) -> None:
    """What an earlier run leaves: its standard outputs, a checkpoint, the manifest."""
    with claim(out, command=command, config=config):
        (out / "config.yaml").write_text("ann: {lr: 0.1}\n")
        (out / "summary.json").write_text("{}")
        (out / "ann" / "checkpoints").mkdir(parents=True)
        (out / "ann" / "checkpoints" / "last.json").write_text("{}")


def test_a_second_concurrent_run_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    holder = start_holder(out)
    try:
        with pytest.raises(OutputError) as info:
            claim(out)
        message = str(info.value)
        assert "\n" not in message and "in use by another run" in message
        assert f"pid {holder.pid}" in message and "pretrain" in message and "since 20" in message
        assert not (out / "summary.json").exists()
        for overwrite in (False, True):  # the plan's check says the same, not "holds an earlier run"
            with pytest.raises(OutputError, match=f"in use by another run \\(spikebridge pretrain, pid {holder.pid} "):
                check_run_folder(out, command="pretrain", config=CONFIG, resume=False, overwrite=overwrite)
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK).exists()  # released on a normal exit
    claim(out, resume=True).release()  # the folder is free again


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capfd):
    out = tmp_path / "out"
    holder = start_holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    left = json.loads((out / LOCK).read_text())
    assert left["pid"] == holder.pid and left["command"] == "pretrain"  # the killed run left its lock
    with claim(out, resume=True):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    note = capfd.readouterr().err
    assert "taking over" in note and f"pid {holder.pid}" in note


def test_pid_liveness_sees_through_a_reused_pid():
    me = {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid())}
    assert _alive(me)
    assert not _alive({**me, "pid_start": me["pid_start"] + 1})  # the same pid, another process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not _alive({**me, "pid": int(dead.stdout), "pid_start": None})


def test_a_foreign_folder_is_refused_and_left_byte_identical(tmp_path):
    out = tmp_path / "mine"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / ".index.lock.tmp").write_text("git's")
    (out / "config.yaml").write_text("my own config\n")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    with pytest.raises(OutputError, match="is not empty and was not written by spikebridge pretrain; use a new --out or --overwrite") as info:
        claim(out)
    assert "\n" not in str(info.value)
    with pytest.raises(OutputError):
        claim(out, resume=True)
    assert snapshot(out) == before and sorted(os.listdir(out)) == [".git", "config.yaml", "notes.txt"]
    with claim(out, overwrite=True):  # --overwrite: the run may write here, and removes nothing
        (out / "summary.json").write_text("{}")
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["names"] == ["summary.json"] and manifest["foreign"] == [".git", "config.yaml", "notes.txt"]


def test_a_rerun_without_resume_is_refused(tmp_path):
    out = tmp_path / "out"
    finished_run(out)
    before = snapshot(out)
    with pytest.raises(OutputError, match="holds an earlier pretrain run; --resume continues it, --overwrite replaces it"):
        claim(out)
    with pytest.raises(OutputError, match="holds an earlier spikebridge pretrain run, not pipes"):
        claim(out, command="pipes", resume=True)
    with pytest.raises(ConfigError, match="give only one"):
        claim(out, resume=True, overwrite=True)
    assert snapshot(out) == before and not (out / LOCK).exists()


def test_a_resume_with_changed_settings_is_refused_naming_each_key_and_changes_no_file(tmp_path):
    out = tmp_path / "out"
    saved = asdict(PipelineConfig())
    finished_run(out, command="pipes", config=saved)
    before = snapshot(out)
    changed = asdict(PipelineConfig())
    changed["ann"]["lr"] = 0.05
    changed["model"]["T"] = 2
    changed["neuron"]["kind"] = "liaf"
    changed["data"]["limit_train"] = 100
    with pytest.raises(ConfigError) as info:
        claim(out, command="pipes", config=changed, resume=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("--resume: the settings differ from the saved run (")
    for key in ("ann.lr: 0.003 -> 0.05", "model.T: 4 -> 2", "neuron.kind: lif -> liaf", "data.limit_train: 0 -> 100"):
        assert key in message
    assert message.endswith("rerun without those changes, or start a new --out")
    assert snapshot(out) == before and not (out / LOCK).exists()


def test_a_resume_with_the_same_settings_continues(tmp_path, capsys):
    out = tmp_path / "out"
    saved = asdict(PipelineConfig())
    finished_run(out, command="pipes", config=saved)
    same = asdict(PipelineConfig())
    same["run"].update(device="cpu", threads=2, progress=False, resume=True, out="elsewhere")  # runtime only
    same["data"]["workers"] = 2
    with claim(out, command="pipes", config=same, resume=True) as folder:
        assert (out / "ann" / "checkpoints" / "last.json").exists()  # nothing of the run was removed
        (out / "snn_pretrained").mkdir()
        assert folder.manifest["names"] == ["ann", "config.yaml", "summary.json"]
    # another thread count is allowed, and said: results are bit-exact for one count (it was silent)
    assert "note: --resume with run.threads 2 (the run used torch's default threads (run.threads 0))" in capsys.readouterr().err
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["names"] == ["ann", "config.yaml", "snn_pretrained", "summary.json"] and manifest["foreign"] == []


def test_a_resume_removes_what_a_killed_write_left_and_nothing_else(tmp_path):
    """A run SIGKILLed while it wrote config.yaml (or summary.json) leaves that write's temporary
    file; the resume that holds the folder removes it, but never another program's file."""
    out = tmp_path / "out"
    finished_run(out)
    ours = [temp_name("config.yaml"), temp_name("summary.json"), temp_name(MANIFEST)]
    for name in ours:
        (out / name).write_text("half")
    (out / "notes.txt.tmp").write_text("someone else's")
    (out / temp_name("notes.txt")).write_text("a foreign target's name: not ours to judge")
    with claim(out, resume=True):
        pass
    left = sorted(p.name for p in out.iterdir())
    assert not set(ours) & set(left)
    assert "notes.txt.tmp" in left and any(n.startswith(".spikebridge-tmp.notes.txt.") for n in left)


def test_resume_into_a_new_folder_starts_a_new_run(tmp_path, capfd):
    out = tmp_path / "new" / "out"
    claim(out, resume=True).release()
    assert "holds no earlier run; starting a new one" in capfd.readouterr().err
    assert json.loads((out / MANIFEST).read_text())["command"] == "pretrain"


def test_overwrite_removes_only_what_the_earlier_run_wrote(tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "x.npz").write_bytes(b"user data")  # there before the first run (--overwrite)
    with claim(out, overwrite=True) as folder:
        folder.own("scratch+T2")
        for phase in ("scratch+T2", "ann"):  # what a phase writes: its metrics and checkpoints
            (out / phase / "checkpoints").mkdir(parents=True)
            (out / phase / "metrics.csv").write_text("epoch\n")
            (out / phase / "checkpoints" / "last.json").write_text("{}")
            (out / phase / "checkpoints" / "last-e0001.safetensors").write_bytes(b"x")
            (out / phase / "checkpoints" / temp_name("last-e0002.safetensors")).write_bytes(b"half")
        (out / "report.md").write_text("old")
        (out / temp_name("report.md")).write_text("half")  # a killed write
    (out / "notes.txt").write_text("written by the user after the run")
    (out / "ann" / "NOTES.txt").write_text("the user's, in a phase folder")  # and evaluate's default output:
    (out / "ann" / "checkpoints" / "evaluation").mkdir()  # it describes the checkpoint replaced: it goes
    (out / "ann" / "checkpoints" / "evaluation" / "evaluation.json").write_text("{}")
    (out / "ann" / "checkpoints" / "evaluation" / "evaluation.md").write_text("top-1 0.97")
    (out / "ann" / "checkpoints" / "evaluation" / "table.tex").write_text("the user's")
    user = snapshot(out / "data"), (out / "notes.txt").read_bytes(), (out / "ann" / "NOTES.txt").read_bytes()
    with claim(out, overwrite=True):
        assert set(os.listdir(out)) == {LOCK, MANIFEST, "data", "notes.txt", "ann"}
    assert (snapshot(out / "data"), (out / "notes.txt").read_bytes(), (out / "ann" / "NOTES.txt").read_bytes()) == user
    assert sorted(str(p.relative_to(out / "ann")) for p in (out / "ann").rglob("*") if p.is_file()) == [
        "NOTES.txt", "checkpoints/evaluation/table.tex"]


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), claim(out):
        (out / "summary.json").write_text("{}")
        raise RuntimeError("training diverged")
    assert not (out / LOCK).exists()
    assert json.loads((out / MANIFEST).read_text())["names"] == ["summary.json"]


def test_other_ranks_write_nothing(tmp_path):
    out = tmp_path / "out"
    claim_run_folder(out, command="pipes", config=CONFIG, resume=False, overwrite=False, is_main=False).release()
    assert not out.exists()


def test_differences_are_short():
    diff = config_differences({"data": {"name": "x" * 5000}}, {"data": {"name": "y" * 5000}, "run": {"out": "b"}})
    assert len(diff) == 1 and len(diff[0]) < 260 and diff[0].startswith("data.name: xxx")
    # paths keep their start and their end (the folder that differs at the end was cut off)
    (diff,) = config_differences({"data": {"name": "/home/me/" + "x" * 150 + "/a/ds"}},
                                 {"data": {"name": "/home/me/" + "x" * 150 + "/b/ds"}})
    assert diff.startswith("data.name: /home/me/xxx") and "/a/ds ->" in diff and diff.endswith("/b/ds")


def test_memory_options_may_change_on_resume():
    """step_in_backward changes memory, not results: a run saved before the key existed, or with it
    off, resumes; a real setting beside it is still named."""
    saved = {"ann": {"lr": 0.1}, "finetune": {"lr": 0.01, "step_in_backward": False}}
    now = {"ann": {"lr": 0.1, "step_in_backward": True}, "finetune": {"lr": 0.01, "step_in_backward": True}}
    assert config_differences(saved, now) == []
    assert config_differences(saved, {**now, "ann": {"lr": 0.2, "step_in_backward": True}}) == ["ann.lr: 0.1 -> 0.2"]


def test_a_tampered_manifest_cannot_reach_outside_the_folder(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    finished_run(out)
    victim.write_text("not yours")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.update(names=["../victim.txt", str(victim), {"x": 1}], config=[1, 2], foreign="x")
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="ann.lr: .absent. -> 0.1"):
        claim(out, resume=True)
    claim(out, overwrite=True).release()
    assert victim.read_text() == "not yours" and not (out / "ann").exists()


DDP = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from spikebridge.train.runfolder import claim_run_folder
    for attempt in ("first", "second"):
        try:
            claim_run_folder(out, command="pipes", config={"a": 1}, resume=False, overwrite=False).release()
            os.write(1, f"{rank} {attempt} claimed\\n".encode())  # one write: the ranks share the pipe
        except Exception as exc:
            os.write(1, f"{rank} {attempt} {type(exc).__name__}\\n".encode())
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, start_method="spawn")
"""


def test_under_torchrun_rank_0_claims_and_every_rank_hears_the_refusal(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), str(out), str(port)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(done.stdout.split("\n")[:-1]) == ["0 first claimed", "0 second OutputError", "1 first claimed",
                                                     "1 second OutputError"]
    assert os.listdir(out) == [MANIFEST]
