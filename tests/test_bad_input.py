"""Bad input as a hostile user would give it (issue 20): every case is a result or one line
naming the file and the problem, never a traceback, a silent NaN or a lost epoch.

Items 1-9 of the issue, one or more tests each; the systematic search over the same entry
points is ``test_fuzz.py``, the kill -9 soak run ``test_soak.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import CLI, Server, cli_env, ok, run_cli, run_main
from factories import as_flags, labelled, noise, tiny_ast, write_audio, write_text_as_audio, write_toy_dataset
from factories import toy_train_settings as base_args

from ast_audio import load_audio, load_model
from ast_audio.base.fileio import atomic_write, clean_stale_temporaries, dumps_json, finite_json
from ast_audio.checkpoints import export_hf, export_original, read_checkpoint, save_checkpoint
from ast_audio.data.labels import read_label_csv
from ast_audio.errors import AstAudioError, CheckpointError, DataError


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit 2 and one ``ast-audio: error:`` line holding ``needles``."""
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("ast-audio: error: "), out.stderr
    for needle in needles:
        assert needle in line, line
    return line


def strict_json(text: str):
    """Parse standard JSON only (a bare NaN / Infinity fails)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def unprivileged(*cmd: object) -> list[str]:
    """``cmd`` run so that file permissions apply: as root, without the capabilities that let
    root read and write any file (``setpriv``, util-linux)."""
    cmd = [str(c) for c in cmd]
    if os.geteuid() == 0:
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return cmd


def zero_sample_wav(path: Path) -> Path:
    """A valid wav header with no samples: non-empty on disk, nothing when decoded."""
    soundfile.write(path, np.zeros(0, dtype="float32"), 16000, subtype="PCM_16")
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-input-ck")
    return save_checkpoint(labelled(tiny_ast(label_dim=3), ["a", "b", "c"], True), folder / "good.safetensors")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("bad-input-audio") / "clip.wav", noise(1.0), 16000, subtype="PCM_16")


# --------------------------------------------------------------------------- 1. a bad clip mid-epoch


@pytest.fixture(scope="module")
def toy_with_bad_clips(tmp_path_factory) -> Path:
    """The toy dataset whose train.json also lists a text file named .wav and a wav of no
    samples: both exist and are not empty, so only reading them finds them out."""
    root = write_toy_dataset(tmp_path_factory.mktemp("toy-bad"), per_class_train=4, per_class_val=2)
    doc = json.loads((root / "train.json").read_text())
    text = write_text_as_audio(root / "audio" / "not_audio.wav")
    hollow = zero_sample_wav(root / "audio" / "hollow.wav")
    doc["data"] += [{"wav": str(text), "labels": "/m/low"}, {"wav": str(hollow), "labels": "/m/high"}]
    (root / "train.json").write_text(json.dumps(doc))
    return root


def test_skip_bad_leaves_out_clips_that_fail_when_read_and_the_epochs_go_on(toy_with_bad_clips, tmp_path):
    exp = tmp_path / "exp"
    args = base_args(toy_with_bad_clips, exp, n_epochs=2, batch_size=4, skip_bad=True, num_workers=1)
    out = ok(run_cli("train", *as_flags(args), OMP_NUM_THREADS=1))
    assert np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2).shape[0] == 2  # both epochs ran
    lines = (exp / "skipped_entries.txt").read_text().splitlines()
    assert len(lines) == 2, lines  # each file once, though drawn in both epochs
    assert any("not_audio.wav" in line and "not a decodable audio file" in line for line in lines), lines
    assert any("hollow.wav" in line and "no audio samples" in line for line in lines), lines
    assert out.stderr.count("not_audio.wav") == 1, out.stderr  # logged once, with its reason
    assert (exp / "models" / "best_audio_model.safetensors").exists()


def test_without_skip_bad_the_error_names_the_clip_and_how_to_skip_it(toy_with_bad_clips, tmp_path):
    args = base_args(toy_with_bad_clips, tmp_path / "exp", n_epochs=1, batch_size=4, num_workers=1)
    out = run_cli("train", *as_flags(args), OMP_NUM_THREADS=1)
    line = one_line_error(out, "--skip-bad", "ast-audio check")
    assert "not_audio.wav" in line or "hollow.wav" in line


def test_check_reports_every_bad_file_in_one_pass(tmp_path):
    good = write_audio(tmp_path / "good.wav", noise(0.5), 16000, subtype="PCM_16")
    text = write_text_as_audio(tmp_path / "text.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    hollow = zero_sample_wav(tmp_path / "hollow.wav")
    full = write_audio(tmp_path / "full.wav", noise(1.0), 16000, subtype="PCM_16").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    rows = [good, text, empty, hollow, tmp_path / "cut.wav", tmp_path / "missing.wav"]
    datafile = tmp_path / "data.json"
    data = [{"wav": str(p), "labels": "/m/a"} for p in rows] + [{"wav": "", "labels": "/m/a"}]
    datafile.write_text(json.dumps({"data": data}))
    out = run_main("check", datafile, "-q")
    assert out.returncode == 1, out.stderr
    reported = out.stdout.splitlines()
    assert len(reported) == 6, reported  # every bad entry, none of the good one
    for name, reason in [("text.wav", "not a decodable audio file"), ("empty.wav", "empty file"),
                         ("hollow.wav", "no audio samples"), ("cut.wav", "truncated"),
                         ("missing.wav", "file not found")]:  # fmt: skip
        assert any(name in line and reason in line for line in reported), (name, reported)
    assert any("entry 6" in line and "missing or empty 'wav'" in line for line in reported)
    assert "6 of 7 entries unusable" in out.stderr
    (tmp_path / "ok.json").write_text(json.dumps({"data": data[:1]}))
    assert ok(run_main("check", tmp_path / "ok.json", "-q")).stdout == ""


def test_check_with_a_label_csv_also_reports_unknown_labels(tmp_path):
    good = write_audio(tmp_path / "good.wav", noise(0.5), 16000, subtype="PCM_16")
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/m/a,A\n")
    data = [{"wav": str(good), "labels": "/m/a"}, {"wav": str(good), "labels": "/m/zzz"}]
    (tmp_path / "d.json").write_text(json.dumps({"data": data}))
    out = run_main("check", tmp_path / "d.json", "--label-csv", tmp_path / "labels.csv", "-q")
    assert out.returncode == 1 and "'/m/zzz' is not in the label CSV" in out.stdout


def test_prepare_and_check_share_one_decode_check():
    from ast_audio.data import check_audio_files
    from ast_audio.recipes import common

    assert common.check_audio_files is check_audio_files


# --------------------------------------------------------------------------- 2. every format round-trips


def _write(model, kind: str, folder: Path) -> Path:
    if kind == "hf":
        return export_hf(model, folder / "hf")
    if kind == "original":
        return export_original(model, folder / "model.pth")
    return save_checkpoint(model, folder / ("model.safetensors" if kind == "ours" else "model.pt"))


FORMATS = ["ours", "ours-pt", "hf", "original"]


@pytest.mark.parametrize("described", [True, False], ids=["stats+labels", "bare"])
@pytest.mark.parametrize("first", FORMATS)
def test_every_format_round_trips_through_every_other(first, described, tmp_path):
    model = tiny_ast(label_dim=3, depth=1)
    if described:
        model = labelled(model, ["dog", "cat", "bird"], multilabel=False, mean=-3.5, std=2.25)
    for second in FORMATS:
        folder = tmp_path / f"{first}-{second}"
        folder.mkdir()
        a = load_model(_write(model, first, folder))
        b = load_model(_write(a, second, folder / "b" if second == first else folder))
        back = load_model(_write(b, first, folder / "back"))
        for name, tensor in model.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), (first, second, name)
        if described and "original" not in (first, second):  # the original layout is weights only
            assert back.info.labels == ["dog", "cat", "bird"]
            assert (back.info.dataset_mean, back.info.dataset_std) == (-3.5, 2.25)
            assert back.info.multilabel is False


def test_hf_export_without_statistics_reads_back(tmp_path):
    export_hf(tiny_ast(label_dim=3), tmp_path / "hf")  # a model that records no statistics
    assert strict_json((tmp_path / "hf" / "preprocessor_config.json").read_text())["mean"] is None
    info = strict_json(ok(run_main("info", tmp_path / "hf")).stdout)
    assert info["layout"] == "hf" and info["dataset_mean"] is not None  # AudioSet's, with a warning


# --------------------------------------------------------------------------- 3. non-finite weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_parameter(value, tmp_path, clip):
    model = tiny_ast(label_dim=3)
    with torch.no_grad():
        model.v.blocks[1].mlp.fc2.weight[3, 4] = value
    path = save_checkpoint(model, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"v\.blocks\.1\.mlp\.fc2\.weight.*non-finite"):
        load_model(path)
    one_line_error(run_main("predict", clip, "--checkpoint", path, "--format", "json"), "v.blocks.1.mlp.fc2.weight")
    forensic = strict_json(ok(run_main("info", path, "--allow-nonfinite")).stdout)
    assert forensic["parameters"] > 0
    ok(run_main("convert", path, tmp_path / "copy.pt", "--allow-nonfinite"))
    copied = load_model(tmp_path / "copy.pt", allow_nonfinite=True).v.blocks[1].mlp.fc2.weight
    assert not torch.isfinite(copied).all()


def test_json_output_is_standard_even_for_non_finite_scores(tmp_path, clip, model_file):
    from ast_audio import AudioTagger

    out = ok(run_main("predict", clip, "--checkpoint", model_file, "--format", "json"))
    assert strict_json(out.stdout)[0]["labels"]
    model = tiny_ast(label_dim=3)
    with torch.no_grad():
        model.mlp_head[1].bias[1] = float("nan")
    path = save_checkpoint(model, tmp_path / "nan.safetensors")
    prediction = AudioTagger(load_model(path, allow_nonfinite=True)).predict(clip)
    text = dumps_json(prediction.to_json())
    assert "NaN" not in text
    assert None in [entry["score"] for entry in strict_json(text)["labels"]], text
    assert finite_json({"a": [1.0, float("inf"), np.float32("nan")], "b": "x"}) == {"a": [1.0, None, None], "b": "x"}


# --------------------------------------------------------------------------- 4. file names that are not UTF-8


def test_a_non_utf8_file_name_loads_and_is_printed_safely(tmp_path, clip, model_file):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav")
    shutil.copy(clip, name)
    path = os.fsdecode(name)  # 'caf\udce9.wav': how Python spells the undecodable byte
    assert torch.equal(load_audio(path), load_audio(clip))
    out = subprocess.run([*CLI, "predict", path, "--checkpoint", str(model_file)], capture_output=True,
                         env=cli_env(), timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert b"caf\\udce9.wav" in out.stdout  # escaped: the output stays valid UTF-8
    out.stdout.decode("utf-8")
    folder = subprocess.run([*CLI, "predict", str(tmp_path), "--checkpoint", str(model_file), "--format", "json"],
                            capture_output=True, env=cli_env(), timeout=300)  # fmt: skip
    assert folder.returncode == 0 and len(strict_json(folder.stdout.decode("utf-8"))) == 1


# --------------------------------------------------------------------------- 5. one line, not a traceback


def _broken_checkpoints(root: Path, model_file: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_ast(label_dim=3).state_dict().items()}
    cases = {}
    cases["metadata not JSON"] = root / "meta.safetensors"
    save_file(state, str(cases["metadata not JSON"]), metadata={"ast-audio": "{not json"})
    cases["metadata a list"] = root / "meta_list.safetensors"
    save_file(state, str(cases["metadata a list"]), metadata={"ast-audio": "[1, 2]"})
    hf = export_hf(labelled(tiny_ast(label_dim=3), ["a", "b", "c"], True), root / "hf")
    for name, edit in [
        ("config a list", lambda c, p: ([1, 2], p)),
        ("mean not a number", lambda c, p: (c, {**p, "mean": "abc"})),
        ("mean a list", lambda c, p: (c, {**p, "mean": [1.0]})),
        ("preprocessor a list", lambda c, p: (c, [c])),
        ("absurd max_length", lambda c, p: ({**c, "max_length": 10**11}, p)),
        ("id2label a list", lambda c, p: ({**c, "id2label": ["a", "b", "c"]}, p)),
        ("layer_norm_eps a string", lambda c, p: ({**c, "layer_norm_eps": "x"}, p)),
    ]:
        folder = shutil.copytree(hf, root / name.replace(" ", "_"))
        config, pre = edit(json.loads((hf / "config.json").read_text()), json.loads((hf / "preprocessor_config.json").read_text()))
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "preprocessor_config.json").write_text(json.dumps(pre))
        cases[name] = folder
    return cases


def test_broken_checkpoint_metadata_is_one_line(tmp_path, model_file):
    for name, path in _broken_checkpoints(tmp_path, model_file).items():
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path) if "metadata" in name else load_model(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), name
        if name in ("metadata not JSON", "config a list", "absurd max_length"):  # the issue's tracebacks, as run
            one_line_error(run_main("info", path), str(path).split("/")[-1])


def test_an_absurd_size_is_refused_before_anything_is_allocated():
    from ast_audio.errors import ConfigError
    from ast_audio.model import ASTConfig

    for field in ({"input_tdim": 10**9}, {"label_dim": 10**9}, {"depth": 10**6}, {"input_fdim": 10**6},
                  {"input_tdim": 60000, "tstride": 1, "fstride": 1}):  # fmt: skip
        with pytest.raises(ConfigError, match="beyond the supported"):
            ASTConfig(model_size="tiny224", **field)


def test_a_bad_cache_folder_is_one_line(tmp_path):
    body = b"weights"
    home_file = tmp_path / "home-is-a-file"
    home_file.write_text("x")
    read_only = tmp_path / "read-only-home"
    read_only.mkdir()
    read_only.chmod(0o555)
    with Server({"w.pth": body}) as server:
        one_line_error(run_main("download", "audioset_10_10_0.4593", "--url", f"{server.url}/w.pth", "-q",
                               AST_AUDIO_HOME=home_file, AST_AUDIO_OFFLINE=0), "is a file, not a folder")  # fmt: skip
        out = subprocess.run(unprivileged(*CLI, "download", "audioset_10_10_0.4593", "--url", f"{server.url}/w.pth",
                                          "-q"), capture_output=True, text=True, timeout=120,
                             env=cli_env(AST_AUDIO_HOME=read_only, AST_AUDIO_OFFLINE=0))  # fmt: skip
    one_line_error(out, str(read_only), "ermission denied")
    assert list(read_only.iterdir()) == []


def test_export_to_a_folder_and_dynamic_time_at_16_frames_are_one_line(tmp_path, model_file):
    (tmp_path / "out").mkdir()
    one_line_error(run_main("export", "--checkpoint", model_file, "--out", tmp_path / "out", "--format", "onnx"),
                   "is a folder")  # fmt: skip
    one_line_error(run_main("export", "--checkpoint", model_file, "--out", tmp_path / "m.onnx", "--input-tdim", "16",
                           "--dynamic-time"), "dynamic time axis needs input_tdim above 16")  # fmt: skip
    with pytest.raises(AstAudioError, match="is a folder"):
        atomic_write(tmp_path / "out", lambda tmp: tmp.write_text("x"))


# --------------------------------------------------------------------------- 6. messages that say what it is


def test_unreadable_file_and_dangling_symlink_say_what_they_are(tmp_path, model_file, clip):
    locked = Path(shutil.copy(clip, tmp_path / "locked.wav"))
    locked.chmod(0)
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    out = subprocess.run(unprivileged(*CLI, "predict", locked, tmp_path / "dangling.wav", clip, "--checkpoint",
                                      model_file), capture_output=True, text=True, env=cli_env(), timeout=300)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{locked}: permission denied" in out.stderr
    assert f"{tmp_path / 'dangling.wav'}: dangling symbolic link" in out.stderr and "gone.wav" in out.stderr
    assert str(clip) in out.stdout  # the good file is still tagged
    with pytest.raises(AstAudioError, match="dangling symbolic link"):
        load_audio(tmp_path / "dangling.wav")


# --------------------------------------------------------------------------- 7. leftovers of kill -9


def test_stale_temporaries_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".best_audio_model.{dead_pid}.abc123xy.tmp.safetensors"
    part = tmp_path / f".audioset_10_10_0.4593.pth.{dead_pid}.q1w2e3r4.part"
    live = tmp_path / f".last.{os.getpid()}.zzz999aa.tmp.pt"
    other = tmp_path / ".hidden.user.file"
    for path in (stale, part, live, other):
        path.write_text("x")
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted([stale, part])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_training_cleans_what_a_killed_writer_left(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", per_class_train=2, per_class_val=1)
    exp = tmp_path / "exp"
    (exp / "models").mkdir(parents=True)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    leftover = exp / "models" / f".last.{dead}.k2j3h4g5.tmp.pt"
    leftover.write_bytes(b"half a checkpoint")
    ok(run_main("train", *as_flags(base_args(toy, exp, n_epochs=1, batch_size=3)), OMP_NUM_THREADS=1))
    assert not leftover.exists()
    assert not [p for p in exp.rglob(".*") if p.is_file()]


# --------------------------------------------------------------------------- 8. permissions follow the umask


def test_written_files_follow_the_umask(tmp_path, model_file):
    env_umask = os.umask(0o027)
    try:
        model = load_model(model_file)
        written = [save_checkpoint(model, tmp_path / "a.safetensors"), save_checkpoint(model, tmp_path / "a.pt"),
                   export_original(model, tmp_path / "o.pth"), export_hf(model, tmp_path / "hf") / "config.json",
                   atomic_write(tmp_path / "t.txt", lambda tmp: tmp.write_text("x"))]  # fmt: skip
    finally:
        os.umask(env_umask)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o640, (path, oct(path.stat().st_mode))
    out = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *CLI, "convert", str(model_file),
                          str(tmp_path / "c.safetensors")], capture_output=True, text=True, env=cli_env())  # fmt: skip
    ok(out)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- 9. BOM labels, offline --url


def test_a_label_csv_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "l.csv").write_bytes("\ufeffindex,mid,display_name\n0,/m/a,A\n1,/m/b,B\n".encode())
    assert read_label_csv(tmp_path / "l.csv").mids == ["/m/a", "/m/b"]
    (tmp_path / "d.json").write_bytes("\ufeff".encode() + json.dumps({"data": []}).encode())
    with pytest.raises(DataError, match="no usable entries"):  # read (the BOM is not an error), just empty
        from ast_audio.data import read_datafile

        read_datafile(tmp_path / "d.json", tmp_path / "l.csv")


def test_offline_stops_download_with_an_explicit_url(tmp_path):
    with Server({"w.pth": b"x" * 100}) as server:
        out = run_main("download", "audioset_10_10_0.4593", "--url", f"{server.url}/w.pth", "-q",
                      AST_AUDIO_HOME=tmp_path, AST_AUDIO_OFFLINE=1)  # fmt: skip
        assert server.hits == []
    one_line_error(out, "AST_AUDIO_OFFLINE=1")
    assert list(tmp_path.iterdir()) == []
