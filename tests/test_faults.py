"""Faults at the edges (issue 30, state and writes): writes that fail in real subprocesses
(the file size limit, an unwritable folder, a full small file system), two processes on one
experiment folder, a recipe rerun refused after its data changed, and the shard defaults
meeting ``torchrun``. Each case ends in one line naming the path (or the holder), and leaves no
partial file, empty folder or half-replaced state behind.

``RLIMIT_FSIZE`` makes a write past the limit fail with ``EFBIG`` (the child ignores
``SIGXFSZ``, which would otherwise kill it). Tests run as root here, where a folder's mode does
not stop a write: :func:`unwritable` then gives a path below a file instead, which fails for
root too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, cli_env, ok, run_cli, run_main, run_torchrun, start_cli, wait_for_file
from factories import (
    SR,
    as_flags,
    noise,
    toy_train_settings,
    write_audio,
    write_tiny_checkpoints,
    write_toy_dataset,
)
from layouts import CLASS_FOLDERS, write_class_folders

from ast_audio.base import lock
from ast_audio.base.fileio import describe_os_error, os_error_of, output_folder
from ast_audio.data.shard_writer import MIN_SHARDS, write_shards

TIMEOUT = 240  # seconds, for any one command here


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny checkpoint, a clip and the toy dataset (12 training clips, 3 classes)."""
    root = tmp_path_factory.mktemp("faults")
    checkpoints = write_tiny_checkpoints(root / "ck")
    clip = write_audio(root / "clip.wav", noise(2.0), SR, subtype="PCM_16")
    toy = write_toy_dataset(root / "toy", per_class_train=4, per_class_val=2)
    return {"checkpoint": checkpoints["single"], "clip": clip, "toy": toy}


def _limited(max_bytes: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def run_limited(max_bytes: int, *args: object) -> subprocess.CompletedProcess:
    """``ast-audio ARGS...`` as a subprocess whose files cannot grow past ``max_bytes``."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS=1),
                          timeout=TIMEOUT, preexec_fn=_limited(max_bytes))  # fmt: skip


def one_line_failure(out: subprocess.CompletedProcess, path: Path | str, reason: str, status: int = 1) -> str:
    """The last stderr line of a failed command: the path and the reason, no traceback."""
    assert out.returncode == status, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ast-audio: ") and str(path) in last and reason in last, last
    return last


def leftovers(folder: Path) -> list[str]:
    """Temporary files of our naming, and empty files, under ``folder``."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and (re.search(r"\.tmp|\.part$", path.name) or path.stat().st_size == 0):
            found.append(str(path.relative_to(folder)))
    return found


def _commands(work: dict, out: Path) -> dict[str, list]:
    """Each command that writes, writing into ``out``."""
    toy = work["toy"]
    settings = toy_train_settings(toy, out, n_epochs=1)
    return {
        "train": ["train", *as_flags(settings)],
        "predict": ["predict", work["clip"], "--checkpoint", work["checkpoint"], "--out", out],
        "embed": ["embed", work["clip"], "--checkpoint", work["checkpoint"], "--out", out],
        "convert-hf": ["convert", work["checkpoint"], out, "--format", "hf"],
        "shard": ["shard", toy / "train.json", "--label-csv", toy / "labels.csv", "--out", out],
    }


# The size limit each command passes only part of the way: the first shard, predictions line,
# embedding row or checkpoint is larger.
LIMITS = {"train": 20_000, "predict": 100, "embed": 100, "convert-hf": 1000, "shard": 30_000}


# --------------------------------------------------------------------------- the file size limit


@pytest.mark.slow
@pytest.mark.parametrize("command", list(LIMITS))
def test_a_write_past_the_file_size_limit_is_one_line_and_leaves_nothing_half_written(work, tmp_path, command):
    out = tmp_path / "out"
    res = run_limited(LIMITS[command], *_commands(work, out)[command])
    one_line_failure(res, out, "file too large")
    if command == "train":  # the run's whole files stay (it resumes), nothing partial, the lock given back
        assert not leftovers(out) and not (out / ".lock").exists()
        assert not list((out / "models").iterdir())  # the checkpoint that did not fit is not there at all
    else:  # a folder the command made is gone again
        assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_predict_out_keeps_what_it_committed_and_a_rerun_finishes(work, tmp_path):
    out, clip = tmp_path / "out", work["clip"]
    many = [shutil.copy(clip, tmp_path / f"c{i:02d}.wav") for i in range(20)]  # two commit groups of 16
    args = ["predict", *many, "--checkpoint", work["checkpoint"], "--format", "csv", "--out"]
    ok(run_main(*args, tmp_path / "whole"))
    lines = (tmp_path / "whole" / "predictions-00000-of-00001.csv").read_text().splitlines(keepends=True)
    first_group = len("".join(lines[: 1 + 16 * 3]).encode())
    res = run_limited(first_group + 10, *args, out)  # room for the first group, not the second
    one_line_failure(res, out / "predictions-00000-of-00001.csv", "file too large")
    rows = (out / "predictions-00000-of-00001.csv").read_text().splitlines()
    assert len(rows) == 1 + 16 * 3 and not leftovers(out)  # the first group, whole; nothing of the second
    ok(run_cli(*args, out, timeout=TIMEOUT))
    assert (out / "predictions-00000-of-00001.csv").read_text() == "".join(lines)


def test_convert_hf_into_an_existing_folder_keeps_its_files_when_a_write_fails(work, tmp_path):
    out = tmp_path / "hf"
    ok(run_main("convert", work["checkpoint"], out, "--format", "hf"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run_limited(1000, "convert", work["checkpoint"], out, "--format", "hf")
    one_line_failure(res, out / "model.safetensors", "file too large")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------- an unwritable folder


def unwritable(tmp_path: Path) -> tuple[Path, str]:
    """``(path, reason)``: a path no write can create, and the words of its failure. A folder
    of mode 0o555 where that stops this user (not root), else a path below a plain file."""
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        (locked / "probe").touch()
    except PermissionError:
        return locked / "out", "permission denied"
    (locked / "probe").unlink()
    locked.chmod(0o755)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "out", "not a folder"


@pytest.mark.slow
@pytest.mark.parametrize("command", list(LIMITS))
def test_an_unwritable_output_folder_is_one_line_naming_it(work, tmp_path, command):
    out, reason = unwritable(tmp_path)
    res = run_cli(*_commands(work, out)[command], timeout=TIMEOUT)
    one_line_failure(res, out, reason)
    assert not out.exists()


# --------------------------------------------------------------------------- a full file system


def _private_mounts() -> list[str] | None:
    """The ``unshare`` prefix that gives a command its own mount table (where it may mount a
    small tmpfs), or ``None`` where this machine allows none."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
@pytest.mark.parametrize("disk_kind", ["full", "read-only"])
@pytest.mark.parametrize("command", list(LIMITS))
def test_a_full_or_read_only_file_system_is_one_line_and_leaves_nothing_half_written(work, tmp_path, command,
                                                                                     disk_kind):  # fmt: skip
    prefix = _private_mounts()
    if prefix is None:
        pytest.skip("this machine lets no process mount a small file system (unshare -m / mount tmpfs)")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    if disk_kind == "read-only":
        mount, reason = f"mount -t tmpfs -o ro,size=1m tmpfs {disk}", "read-only file system"
    elif command == "train":  # room for the run's small files, not for a checkpoint
        mount, reason = f"mount -t tmpfs -o size=1m tmpfs {disk}", "no space left on device"
    else:  # a disk already full
        mount = f"mount -t tmpfs -o size=256k tmpfs {disk} && {{ head -c 1m /dev/zero > {disk}/filler 2>/dev/null; }}"
        reason = "no space left on device"
    script = f"{mount}; \"$@\"; echo \"exit=$?\"; find {disk} -mindepth 1 ! -name filler -printf '%P %s\\n'"
    args = [*prefix, "sh", "-c", script, "sh", *CLI, *map(str, _commands(work, out)[command])]
    res = subprocess.run(args, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS=1), timeout=TIMEOUT)
    status = int(re.search(r"^exit=(\d+)$", res.stdout, re.M).group(1))
    left = res.stdout.split("exit=")[1].splitlines()[1:]  # what the disk held after the command
    one_line_failure(subprocess.CompletedProcess(args, status, "", res.stderr), out, reason)
    if command == "train" and disk_kind == "full":
        names = [line.split()[0] for line in left]
        assert not [n for n in names if ".tmp" in n or n.endswith(".lock")], left
        assert not [n for n in names if n.startswith("out/models/") and n.endswith(".safetensors")], left
    else:
        assert left == [], left


# --------------------------------------------------------------------------- two runs, one folder


@pytest.mark.slow
def test_a_second_run_in_a_busy_experiment_folder_is_refused_and_a_killed_runs_lock_is_taken_over(work, tmp_path):
    exp = tmp_path / "exp"
    flags = as_flags(toy_train_settings(work["toy"], exp, n_epochs=200))
    first = start_cli("train", *flags, OMP_NUM_THREADS=1)
    try:
        wait_for_file(exp / ".lock", first, timeout=120)
        holder = json.loads((exp / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = run_cli("train", *flags, timeout=TIMEOUT)
        line = one_line_failure(second, exp, f"in use by `ast-audio train` (pid {first.pid} on", status=2)
        assert "use another experiment folder" in line
        before = sorted(p.name for p in exp.iterdir())
    finally:
        first.kill()  # kill -9: the lock stays behind, stale
        first.wait()
    assert json.loads((exp / ".lock").read_text())["pid"] == first.pid
    assert sorted(p.name for p in exp.iterdir()) == before  # the refused run wrote nothing
    flags = as_flags(toy_train_settings(work["toy"], exp, n_epochs=1))
    third = ok(run_cli("train", *flags, timeout=TIMEOUT))
    assert f"taking over the lock of `ast-audio train` (pid {first.pid} on" in third.stderr
    assert not (exp / ".lock").exists() and (exp / "models" / "last.pt").is_file()


def test_a_lock_from_another_host_is_honoured_and_says_how_to_remove_it(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "ast-audio train",
                                           "started": time.time()}))  # fmt: skip
    with pytest.raises(lock.FolderLocked, match=r"pid 1 on elsewhere.example.*another machine.*remove .*\.lock"):
        lock.acquire(exp, "ast-audio train")
    assert json.loads((exp / ".lock").read_text())["host"] == "elsewhere.example"


def test_a_stale_lock_is_taken_over_with_a_warning_and_the_lock_is_reentrant(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "command": "ast-audio x",
                                           "started": time.time()}))  # fmt: skip
    with caplog.at_level("WARNING", logger="ast_audio.base.lock"), lock.folder_lock(exp, "ast-audio y") as held:
        assert f"taking over the lock of `ast-audio x` (pid {gone.pid} on" in caplog.text
        assert json.loads(held.read_text())["pid"] == os.getpid()
        with lock.folder_lock(exp, "ast-audio z"):  # the same process: no refusal
            pass
        assert held.exists()  # the outer hold goes on
    assert not (exp / ".lock").exists()
    with lock.folder_lock(exp, "ast-audio y", take=False) as none:  # a torchrun rank other than 0
        assert none is None and not (exp / ".lock").exists()


def test_a_lock_left_empty_by_a_killed_taker_is_stale_once_old(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".lock").write_text("")
    monkeypatch.setattr(lock, "_EMPTY_WAIT", 0.1)
    with pytest.raises(lock.FolderLocked, match="cannot be read"):
        lock.acquire(exp, "ast-audio train")  # fresh: its taker may be writing it now
    old = time.time() - 60
    os.utime(exp / ".lock", (old, old))
    lock.release(lock.acquire(exp, "ast-audio train"))
    assert not (exp / ".lock").exists()


# --------------------------------------------------------------------------- a refused recipe rerun


@pytest.mark.slow
def test_a_recipe_rerun_refused_after_the_data_gained_a_class_keeps_the_old_data(tmp_path):
    root = tmp_path / "mine"
    write_class_folders(root, classes={name: CLASS_FOLDERS[name] for name in ("dog", "cat")})
    exp = tmp_path / "exp"
    args = ("recipe", "folder", root, "--exp-dir", exp, "--set", "n_epochs=1", "batch_size=8", "progress=false",
            "device=cpu")  # fmt: skip
    ok(run_main(*args, AST_AUDIO_HOME=tmp_path / "home"))
    def files() -> dict:  # the run's log records the refused attempt too: the rest must not change
        return {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file() and p.name != "log.txt"}

    kept = files()
    shutil.copytree(root / "dog", root / "bird")  # the data gains a class
    refused = run_main(*args, AST_AUDIO_HOME=tmp_path / "home")
    one_line_failure(refused, exp, "n_class: 2 there, 3 now", status=2)
    assert "the data prepared before is back in place" in refused.stderr
    assert files() == kept  # data/, recipe.json and the run: all as the first run left them
    assert not (tmp_path / "exp" / ".data.previous").exists()
    labels = (exp / "data" / "class_labels_indices.csv").read_text()
    assert "bird" not in labels and "dog" in labels
    # in a new experiment folder the same command prepares the three classes and trains
    ok(run_main(*args[:3], "--exp-dir", tmp_path / "exp2", *args[5:], AST_AUDIO_HOME=tmp_path / "home"))
    assert "bird" in (tmp_path / "exp2" / "data" / "class_labels_indices.csv").read_text()


def test_a_failed_preparation_puts_the_earlier_one_back(tmp_path, monkeypatch):
    from ast_audio.recipes import common

    out = tmp_path / "data"
    common.ensure_prepared(out, "x", {"v": 1}, lambda: common.write_text_atomic(out / "a.txt", "one") and {"n": 1})

    def broken() -> dict:
        common.write_text_atomic(out / "a.txt", "half")
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "b.txt"))

    with pytest.raises(OSError):
        common.ensure_prepared(out, "x", {"v": 2}, broken)
    assert (out / "a.txt").read_text() == "one" and json.loads((out / "prepared.json").read_text())["inputs"] == {"v": 1}
    assert not common.previous_of(out).exists()


def test_a_dataset_prepared_into_its_own_folder_is_prepared_there_again(tmp_path):
    from ast_audio.recipes import common

    out = tmp_path / "dataset"
    (out / "audio").mkdir(parents=True)
    (out / "audio" / "clip.wav").write_bytes(b"RIFF")

    def prepare() -> dict:  # reads the dataset inside the folder it writes
        return {"clips": len(list((out / "audio").iterdir()))}

    for version in (1, 2):
        inputs = {"root": str(out / "audio"), "v": version}
        assert common.ensure_prepared(out, "x", inputs, prepare) == {"clips": 1}
    assert (out / "audio" / "clip.wav").read_bytes() == b"RIFF" and not common.previous_of(out).exists()


# --------------------------------------------------------------------------- shards and torchrun


def test_shard_spreads_a_small_dataset_over_enough_shards_for_the_readers(work, tmp_path):
    toy = work["toy"]
    index = write_shards(toy / "train.json", toy / "labels.csv", tmp_path / "s")  # the default size: 500MB
    assert len(index["shards"]) == MIN_SHARDS and index["samples"] == 12
    assert sorted(s["samples"] for s in index["shards"]) == [1, 1, 1, 1, 2, 2, 2, 2]
    few = write_shards(toy / "train.json", toy / "labels.csv", tmp_path / "few", min_shards=20)
    assert len(few["shards"]) == 12  # one clip each: no empty shard
    res = ok(run_main("shard", toy / "train.json", "--label-csv", toy / "labels.csv", "--out", tmp_path / "cli",
                      "--min-shards", "3"))  # fmt: skip
    assert "12 clips in 3 shards" in res.stdout
    assert run_main("shard", toy / "train.json", "--label-csv", toy / "labels.csv", "--out", tmp_path / "x",
                    "--min-shards", "0").returncode == 2  # fmt: skip


@pytest.mark.slow
def test_shards_written_with_the_defaults_feed_two_torchrun_processes(work, tmp_path):
    toy, shards = work["toy"], tmp_path / "shards"
    ok(run_cli("shard", toy / "train.json", "--label-csv", toy / "labels.csv", "--out", shards, timeout=TIMEOUT))
    settings = toy_train_settings(toy, tmp_path / "exp", data_train=str(shards), n_epochs=1, batch_size=4)
    res = run_torchrun("train", *as_flags(settings), "--device", "cpu", timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len((tmp_path / "exp" / "result.csv").read_text().splitlines()) == 1
    assert not (tmp_path / "exp" / ".lock").exists()  # rank 0 took it and gave it back


# --------------------------------------------------------------------------- the words


@pytest.mark.parametrize(("number", "words"), [
    (errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only file system"), (errno.EFBIG, "file too large"), (errno.EDQUOT, "disk quota exceeded"),
])  # fmt: skip
def test_os_errors_are_told_as_the_path_and_the_reason(number, words):
    text = describe_os_error(OSError(number, os.strerror(number), "/data/exp/models/x.pt"))
    assert text.startswith(f"/data/exp/models/x.pt: {words}") and "\n" not in text


def test_the_os_error_inside_a_librarys_own_exception_is_found():
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert os_error_of(wrapped).errno == errno.ENOSPC
    try:  # torch.save into a file object: its writer fails while the file's OSError is handled
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as err:
        chained = err
    assert os_error_of(chained).errno == errno.EFBIG
    assert os_error_of(ValueError("bad value")) is None and os_error_of(OSError("no number")) is None


def test_an_output_folder_made_for_a_failed_write_is_removed_and_an_existing_one_kept(tmp_path):
    with pytest.raises(OSError), output_folder(tmp_path / "new" / "deeper") as folder:
        (folder / "part").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep").write_text("x")
    with pytest.raises(OSError), output_folder(tmp_path / "old"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "old" / "keep").read_text() == "x"
