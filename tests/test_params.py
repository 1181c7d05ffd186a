"""Numeric options are checked where they are parsed, by one set of validators
(:mod:`ast_audio.base.checks`), with the same words in the CLI, the library and the service;
``--help`` of every command works; the words of OS errors name the real cause; the demo
asks for its optional dependency before it trains."""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import CLI, cli_env, run_main
from factories import SR, noise, write_audio

from ast_audio.audio.io import file_problem, os_error_reason
from ast_audio.base.checks import check_number, number_arg
from ast_audio.cli.main import build_parser
from ast_audio.errors import AstAudioError, ConfigError
from ast_audio.infer import AudioTagger, PostProcessing
from ast_audio.infer.frames import MAX_FRAMES, FrameGrid, check_frames

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_usage_error(out, *needles: str) -> None:
    """Exit 2, no traceback, and the last stderr line is argparse's (or ours) holding ``needles``."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(("ast-audio: error: ", "ast-audio ")) and all(n in last for n in needles), out.stderr


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL_COMMANDS = list(commands(build_parser()))


def test_every_command_has_subcommands_listed():
    assert ("prepare", "esc50") in ALL_COMMANDS and ("predict",) in ALL_COMMANDS and ("serve",) in ALL_COMMANDS
    assert len(ALL_COMMANDS) > 25


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "ast-audio")
def test_help_of_every_command_and_subcommand(path):
    out = run_main(*path, "--help")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.startswith("usage: ast-audio") and "-h, --help" in out.stdout


# --------------------------------------------------------------------------- the validators


def test_check_number_takes_finite_numbers_in_range_and_names_the_option():
    assert check_number(0.5, "threshold", low=0, high=1) == 0.5
    assert check_number(np.float32(0.25), "threshold", low=0, high=1) == 0.25  # the library's own results
    assert check_number(3, "frames", low=1, integer=True) == 3
    cases = {
        (float("inf"), "threshold"): "threshold must be a finite number, got inf",
        (float("nan"), "threshold"): "threshold must be a finite number, got nan",
        (2.0, "threshold"): "threshold must be in [0, 1], got 2",
        (True, "threshold"): "threshold must be a number, got True",
        ("0.5", "threshold"): "threshold must be a number, got '0.5'",
    }
    for (value, name), message in cases.items():
        with pytest.raises(ConfigError) as err:
            check_number(value, name, low=0, high=1)
        assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"^hop must be positive and at most 60 seconds, got 0$"):
        check_number(0.0, "hop", above=0, high=60, unit="seconds")
    with pytest.raises(ConfigError, match=r"^frames must be at most 5, got 1000000000000"):  # too large for a float
        check_number(10**400, "frames", high=5, integer=True)
    with pytest.raises(ConfigError, match=r"^frames must be an integer, got 2.5$"):
        check_number(2.5, "frames", low=1, integer=True)


def test_number_arg_parses_text_and_refuses_in_argparse_words():
    parse = number_arg(low=1, high=65535, integer=True)
    assert parse("8000") == 8000
    for text, message in {"99999": "must be in [1, 65535], got 99999", "1e3": "expected an integer, got '1e3'",
                          "x": "expected an integer, got 'x'"}.items():  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
            parse(text)
    seconds = number_arg(above=0, high=10, unit="seconds")
    assert seconds("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a finite number, got inf$"):
        seconds("inf")


def test_the_library_refuses_what_the_cli_refuses():
    with pytest.raises(ConfigError, match="^hop must be at least 0.01 seconds, got 1e-07$"):
        FrameGrid(hop=1e-7, window=0.5, rate=SR)
    with pytest.raises(ConfigError, match="^window must be a finite number, got inf$"):
        FrameGrid(hop=0.1, window=float("inf"), rate=SR)
    for kwargs, message in [({"threshold": 2.0}, "threshold must be in [0, 1], got 2"),
                            ({"threshold": float("nan")}, "threshold must be a finite number, got nan"),
                            ({"threshold": [0.5, 1.5]}, "threshold must be in [0, 1], got 1.5"),
                            ({"median": float("inf")}, "median must be a finite number, got inf"),
                            ({"min_gap": float("nan")}, "min_gap must be a finite number, got nan")]:  # fmt: skip
        with pytest.raises(ConfigError) as err:
            PostProcessing(**kwargs)
        assert str(err.value) == message
    assert PostProcessing(threshold=np.array([0.2, 0.8])).threshold is not None


def test_frame_counts_are_bounded_before_the_model_runs():
    grid = FrameGrid(hop=0.01, window=0.5, rate=SR)
    assert grid.frames(SR * 2, "a.wav") == range(200)
    with pytest.raises(AstAudioError) as err:
        grid.frames(SR * 2, "a.wav", limit=150)
    assert str(err.value) == "a.wav: a timeline of 200 windows; at most 150 (choose a longer hop)"
    assert check_frames(MAX_FRAMES, None) == MAX_FRAMES
    with pytest.raises(AstAudioError, match="at most 1000000"):
        check_frames(MAX_FRAMES + 1, "long.wav")


def test_the_tagger_api_refuses_non_finite_and_tiny_options(checkpoints, tmp_path):
    tagger = AudioTagger(checkpoints["single"], device="cpu", precision="fp32")
    clip = noise(2.0)
    for call, message in [
        (lambda: tagger.timeline(clip, hop=1e-7, sample_rate=SR), "hop must be at least 0.01 seconds"),
        (lambda: tagger.timeline(clip, window=float("inf"), sample_rate=SR), "window must be a finite number"),
        (lambda: tagger.timeline(clip, 0.02, 1e-7, sample_rate=SR, method="windows"), "hop must be at least 0.01"),
        (lambda: tagger.timeline(clip, sample_rate=SR, threshold=float("nan")), "threshold must be a finite number"),
        (lambda: tagger.predict(clip, SR, hop=float("nan")), "hop must be a finite number"),
        (lambda: tagger.attention(clip, SR, start=float("inf")), "start must be a finite number"),
        (lambda: list(tagger.stream([clip], SR, frames_per_call=0)), "frames_per_call must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()


# --------------------------------------------------------------------------- the CLI cases of the issue


def test_predict_refuses_the_issues_numbers_in_one_line(checkpoints, tmp_path):
    clip = write_audio(tmp_path / "two.wav", noise(2.0), SR, subtype="PCM_16")
    base = ["predict", clip, "--checkpoint", checkpoints["single"], "--timeline"]
    one_line_usage_error(run_main(*base, "--hop", "1e-7"), "argument --hop: must be in [0.01, 3600] seconds, got 1e-07")
    one_line_usage_error(run_main(*base, "--window", "inf"), "argument --window: must be a finite number, got inf")
    one_line_usage_error(run_main(*base, "--threshold", "2"), "argument --threshold: must be in [0, 1], got 2")
    one_line_usage_error(run_main(*base, "--threshold", "nan"), "argument --threshold: must be a finite number")
    one_line_usage_error(run_main(*base, "--median=-inf"), "argument --median: must be a finite number")
    one_line_usage_error(run_main(*base, "-b", "0"), "argument -b/--batch-size: must be in [1, 65536], got 0")
    ok = run_main(*base, "--hop", "0.01", "--format", "json")
    assert ok.returncode == 0, ok.stderr


def test_listen_and_serve_refuse_out_of_range_numbers(checkpoints):
    ck = checkpoints["single"]
    one_line_usage_error(run_main("listen", "--checkpoint", ck, "--input", "-", "--block", "inf"), "--block")
    one_line_usage_error(run_main("listen", "--checkpoint", ck, "--input", "-", "--rate", "10"),
                         "argument --rate: must be in [1000, 384000], got 10")  # fmt: skip
    one_line_usage_error(run_main("serve", "--checkpoint", ck, "--timeout", "nan"), "argument --timeout")
    one_line_usage_error(run_main("serve", "--checkpoint", ck, "--max-upload-mb", "inf"), "argument --max-upload-mb")


def test_train_float_flags_refuse_non_finite_numbers(tmp_path):
    for flag in ("--lr", "--mixup", "--dataset_mean", "--weight-decay"):
        one_line_usage_error(run_main("train", flag, "nan", "--exp-dir", tmp_path / "exp"), flag)
    one_line_usage_error(run_main("train", "--betas", "0.9,inf", "--exp-dir", tmp_path / "exp"), "--betas")
    one_line_usage_error(run_main("train", "--patchout-t", "nan", "--exp-dir", tmp_path / "exp"), "--patchout-t")
    one_line_usage_error(run_main("train", "--depth", "100000000", "--exp-dir", tmp_path / "exp"),
                         "argument --depth: must be in [1, 64], got 100000000")  # fmt: skip
    assert not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------- words of OS errors


def test_os_errors_are_named_by_their_cause(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nothing.wav")
    assert file_problem(tmp_path / "a") == "symlink loop (symbolic links that lead back to themselves)"
    assert file_problem(tmp_path / "gone.wav").startswith("dangling symbolic link")
    assert file_problem(tmp_path / "missing.wav") == "file not found"
    # where this process cannot produce one (root reads any file), the real errno it would get
    with pytest.raises(OSError) as loop:
        os.open(tmp_path / "a", os.O_RDONLY)
    assert os_error_reason(loop.value, tmp_path / "a").startswith("symlink loop")
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "x"))
    assert os_error_reason(denied) == "permission denied (the file is not readable by this user)"
    assert os_error_reason(OSError(errno.EIO, os.strerror(errno.EIO))) == f"cannot read the file ({os.strerror(errno.EIO)})"


def test_a_checkpoint_that_loops_or_cannot_be_read_says_so(tmp_path, checkpoints):
    (tmp_path / "a.safetensors").symlink_to(tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors").symlink_to(tmp_path / "a.safetensors")
    out = run_main("info", tmp_path / "a.safetensors")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"ast-audio: error: {tmp_path / 'a.safetensors'}: symlink loop (symbolic links that lead back to themselves)"
    ]
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "nothing.safetensors")
    out = run_main("info", tmp_path / "gone.safetensors")
    assert out.returncode == 2 and "dangling symbolic link" in out.stderr and "no such file" not in out.stderr
    locked = shutil.copy(checkpoints["single"], tmp_path / "locked.safetensors")
    os.chmod(locked, 0)
    cmd = [*CLI, "info", str(locked)]
    if os.geteuid() == 0:  # root reads any file: drop the capabilities that let it (as test_bad_input does)
        if shutil.which("setpriv") is None:
            pytest.fail("setpriv (util-linux) is needed to test an unreadable file as root")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"ast-audio: error: {locked}: permission denied (the file is not readable by this user)"
    ], out.stderr


# --------------------------------------------------------------------------- the demo on a plain install


@pytest.fixture
def without_events_extra(monkeypatch):
    """This process as a plain install sees it: sed_eval and sed_scores_eval not found."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("sed_eval", "sed_scores_eval") else find_spec(name, *a))  # fmt: skip


def test_the_demo_asks_for_the_events_extra_before_it_trains(tmp_path, without_events_extra):
    out = run_main("demo", "--out", tmp_path / "demo", "--scenes", "2")
    one_line_usage_error(out, "needs sed_eval and sed_scores_eval", "pip install 'ast-audio[events]'", "--scenes 0")
    assert not (tmp_path / "demo").exists()  # nothing made, nothing trained


def test_the_demo_without_the_events_extra_skips_calibration_by_default(tmp_path, without_events_extra, monkeypatch):
    import ast_audio.recipes.demo as demo

    asked = {}

    def stop_before_work(out, **kwargs):
        asked.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(demo, "run_demo", stop_before_work)
    out = run_main("demo", "--out", tmp_path / "demo")
    assert asked["scenes"] == 0
    assert out.stderr.splitlines()[0] == ("ast-audio demo: event thresholds not calibrated (sed_eval and "
                                          "sed_scores_eval missing: pip install 'ast-audio[events]')")  # fmt: skip


def test_the_demo_with_the_events_extra_calibrates_by_default(tmp_path, monkeypatch):
    import ast_audio.recipes.demo as demo

    asked = {}

    def stop_before_work(out, **kwargs):
        asked.update(kwargs)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(demo, "run_demo", stop_before_work)
    run_main("demo", "--out", tmp_path / "demo")
    assert asked["scenes"] == 4


def test_the_median_filter_sorts_bounded_blocks_and_long_medians_are_refused(monkeypatch):
    import ast_audio.infer.events as events

    scores = np.random.default_rng(0).random((300, 4))
    padded = np.concatenate([np.repeat(scores[:1], 15, 0), scores, np.repeat(scores[-1:], 15, 0)])
    direct = np.stack([np.median(padded[i : i + 31], axis=0) for i in range(300)])  # frame by frame, edges repeated
    monkeypatch.setattr(events, "MEDIAN_ELEMENTS", 31 * 4 * 7)  # 7 frames at a time
    assert np.array_equal(events.median_filter(scores, 31), direct)
    with pytest.raises(ConfigError, match="^median must be at most 60, got 3600$"):
        PostProcessing(median=3600.0)
