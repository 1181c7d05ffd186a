"""The ``ast-audio`` command: its entry point as a real subprocess (``python -m ast_audio``), the
rest through ``main`` in this process (``run_main``), whose results the subprocess's must equal."""

from __future__ import annotations

import json

import torch
from conftest import Server, run_cli, run_main
from factories import original_audioset_state, tiny_ast

from ast_audio import load_model
from ast_audio.checkpoints import export_original

TIMEOUT = 120  # seconds: these commands take a few


def test_checkpoints_lists_the_registry(tmp_path):
    out = run_cli("checkpoints", timeout=TIMEOUT, AST_AUDIO_HOME=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "audioset_10_10_0.4593" in out.stdout and "speechcommands_10_10_0.9812" in out.stdout
    assert "deit_base_distilled_patch16_384" in out.stdout


def test_info_and_convert_round_trip(tmp_path):
    source = tiny_ast(label_dim=527, fstride=16, tstride=16, input_tdim=1024)
    pth = export_original(source, tmp_path / "audioset_16_16_0.4422.pth")
    out = run_main("info", pth, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["layout"] == "ast" and info["patch_grid"] == [8, 64] and info["labels"] == 527

    for fmt, target in [("ast-audio", tmp_path / "m.safetensors"), ("hf", tmp_path / "hf"), ("original", tmp_path / "o.pth")]:
        out = run_main("convert", pth, target, "--format", fmt, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        converted = load_model(target, fstride=16, tstride=16)
        x = torch.randn(1, 1024, 128)
        with torch.no_grad():
            assert (converted(x) - source(x)).abs().max() <= 1e-4, fmt


def test_errors_are_one_line_without_traceback(tmp_path):
    for args in (["info", tmp_path / "missing.pth"], ["info", "not_a_name"]):
        out = run_cli(*args, timeout=TIMEOUT)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ast-audio: error:"), out.stderr
        assert "Traceback" not in out.stderr
        here = run_main(*args)  # the in-process runner the other tests use gives the same result
        assert (here.returncode, here.stdout, here.stderr) == (out.returncode, out.stdout, out.stderr)
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    out = run_cli("info", bad, timeout=TIMEOUT)
    assert out.returncode == 2 and str(bad) in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_download_from_a_mirror(tmp_path):
    path = tmp_path / "src.pth"
    torch.save(original_audioset_state(depth=1), path)
    home = tmp_path / "home"
    with Server({"audioset_10_10_0.4593.pth": path.read_bytes()}) as server:
        out = run_main("download", "audioset_10_10_0.4593", "--url", f"{server.url}/audioset_10_10_0.4593.pth", "-q", timeout=TIMEOUT, AST_AUDIO_HOME=home, AST_AUDIO_OFFLINE=0)
    assert out.returncode == 0, out.stderr
    assert (home / "audioset_10_10_0.4593.pth").read_bytes() == path.read_bytes()
    assert "cached" in run_main("checkpoints", timeout=TIMEOUT, AST_AUDIO_HOME=home).stdout


def test_offline_download_is_a_clear_error(tmp_path):
    out = run_main("download", "audioset_10_10_0.4495", timeout=TIMEOUT, AST_AUDIO_HOME=tmp_path, AST_AUDIO_OFFLINE="1")
    assert out.returncode == 2
    assert "AST_AUDIO_OFFLINE=1" in out.stderr and "dropbox.com" in out.stderr


def test_run_main_exits_as_the_command_does_and_puts_the_process_state_back(tmp_path):
    """The in-process runner: argparse's exit status and usage line, and the environment, root
    logger, thread count and random generator of this process as they were before the run."""
    import logging
    import os

    def state():
        root = logging.getLogger()
        return dict(os.environ), root.handlers[:], root.level, torch.get_num_threads(), torch.random.get_rng_state()

    before = state()
    usage = run_main("info", "--no-such-flag", OMP_NUM_THREADS=1, AST_AUDIO_HOME=tmp_path)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: ast-audio") and usage.stdout == ""
    missing = run_main("-v", "info", tmp_path / "missing.pth", AST_AUDIO_HOME=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("ast-audio: error: ")
    assert run_main("--version").stdout == f"ast-audio {__import__('ast_audio').__version__}\n"
    after = state()
    assert after[:4] == before[:4] and torch.equal(after[4], before[4])
