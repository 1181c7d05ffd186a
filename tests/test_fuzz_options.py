"""Hypothesis over every numeric option: any number a user can type (inf, nan, negative, huge,
tiny, not a number at all) is either accepted and bounded, or refused in one line with exit
status 2, never a traceback or a hang.

Three levels, each over what the user reaches:
- **every numeric flag of every command**, where it is parsed: the flag's argparse ``type``
  returns a finite number or raises the error argparse turns into a usage line;
- **the commands that run quickly** (``predict --timeline``, ``listen --input FILE``) run
  whole in this process with each value, on a tiny model and a one-second clip;
- **the service's** timeline and attention query parameters: a 200 or a 4xx, never a 500.

Seeded (``derandomize``) and bounded: ``EXAMPLES`` cases per option (``AST_AUDIO_FUZZ=K``
multiplies them), each under a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal

import pytest
from conftest import run_main
from factories import SR, noise, write_audio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ast_audio.cli.main import build_parser

pytestmark = pytest.mark.usefixtures("one_thread")

SCALE = max(1, int(os.environ.get("AST_AUDIO_FUZZ", "1")))
EXAMPLES = 30 * SCALE  # per flag, at the parser
RUNS = 12 * SCALE  # per flag, whole commands
CASE_SECONDS = 60  # a case that takes longer is a hang (or an unbounded frame count)
NUMERIC_TYPES = {"number", "integer", "_betas", "_count_or_fraction", "_freeze", "_count"}

cases = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
runs = settings(cases, max_examples=RUNS)


def numbers_as_typed():
    """What a user types where a number goes: floats of every kind (inf, nan, subnormal, huge),
    integers of any size, both signs, in the spellings Python and shells give them."""
    floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    integers = st.integers(min_value=-(10**30), max_value=10**30).map(str)
    special = st.sampled_from(["inf", "-inf", "nan", "NaN", "1e-7", "1e308", "1e309", "-0", "0", "0.0", "1",
                               "2", "65536", "99999", "1e3", "0x10", "", " ", "1_000", "½", "0.9,inf", "4,5",
                               "9" * 400, "-" + "9" * 400])  # fmt: skip
    return st.one_of(special, floats, integers, st.text(max_size=8))


def numeric_flags() -> list[tuple[str, argparse.Action]]:
    """``("command flag", action)`` of every numeric option of every command and subcommand."""
    out = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif getattr(action.type, "__name__", None) in NUMERIC_TYPES:
                out.append((" ".join((*path, action.option_strings[-1])), action))

    walk(build_parser(), ())
    return out


FLAGS = numeric_flags()


@contextlib.contextmanager
def time_limit(seconds: int = CASE_SECONDS):
    def hang(signum, frame):
        raise TimeoutError(f"a case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def finite(value) -> bool:
    if isinstance(value, tuple):
        return all(finite(v) for v in value)
    if isinstance(value, str):
        return value == "all"  # --freeze all
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_every_numeric_flag_is_found():
    names = {name for name, _ in FLAGS}
    for expected in ("predict --hop", "predict --window", "predict --threshold", "predict --batch-size",
                     "listen --block", "listen --rate", "serve --port", "serve --timeout", "train --lr",
                     "train --n-class", "demo --epochs", "synth --seconds", "prepare esc50 --workers",
                     "prepare csv --valid-fraction", "convert --input-tdim", "evaluate --mistakes"):  # fmt: skip
        assert expected in names, sorted(names)
    assert len(FLAGS) > 60


@pytest.mark.parametrize("name, action", FLAGS, ids=[name for name, _ in FLAGS])
def test_a_numeric_flag_is_finite_and_in_range_or_a_usage_error(name, action):
    @cases
    @given(text=numbers_as_typed())
    def check(text):
        try:
            value = action.type(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            return  # argparse's usage error: one line, exit 2
        assert finite(value), f"{name} {text!r} parsed as {value!r}"
        if getattr(action.type, "__name__", None) in ("number", "integer"):
            assert abs(value) <= 10**10, f"{name} {text!r} parsed as {value!r}: unbounded"

    check()


# --------------------------------------------------------------------------- whole commands


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("fuzz-options") / "one.wav", noise(1.0), SR, subtype="PCM_16")


def one_line_or_success(out, what: str) -> None:
    assert "Traceback" not in out.stderr, f"{what}\n{out.stderr[-3000:]}"
    assert out.returncode in (0, 2), f"{what}: exit {out.returncode}\n{out.stderr[-3000:]}"
    if out.returncode == 2:
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(("ast-audio: error: ", "ast-audio ")), f"{what}\n{out.stderr}"


PREDICT_FLAGS = ["--window", "--hop", "--threshold", "--off-ratio", "--median", "--min-duration", "--min-gap",
                 "--top-k", "--batch-size"]  # fmt: skip


@pytest.mark.parametrize("flag", PREDICT_FLAGS)
def test_predict_timeline_with_any_number_answers_or_refuses_in_one_line(flag, checkpoints, clip):
    @runs
    @given(text=numbers_as_typed())
    def check(text):
        with time_limit():
            out = run_main("predict", clip, "--checkpoint", checkpoints["single"], "--timeline", "--format", "json",
                           "--precision", "fp32", f"{flag}={text}")  # fmt: skip
        one_line_or_success(out, f"predict --timeline {flag}={text}")

    check()


@pytest.mark.parametrize("flag", ["--block", "--frames-per-call", "--hop", "--threshold", "--median"])
def test_listen_with_any_number_answers_or_refuses_in_one_line(flag, checkpoints, clip):
    @runs
    @given(text=numbers_as_typed())
    def check(text):
        with time_limit():
            out = run_main("listen", "--checkpoint", checkpoints["single"], "--input", clip, "--as-fast-as-possible",
                           "--precision", "fp32", "--format", "json", f"{flag}={text}")  # fmt: skip
        one_line_or_success(out, f"listen {flag}={text}")

    check()


# --------------------------------------------------------------------------- the service


@pytest.mark.parametrize("param", ["window", "hop", "threshold", "off_ratio", "median", "min_gap", "top_k"])
def test_the_service_answers_any_number_with_200_or_4xx(param, checkpoints, clip):
    from fastapi.testclient import TestClient

    from ast_audio.infer import AudioTagger
    from ast_audio.serve import ServeSettings, create_app

    tagger = AudioTagger(checkpoints["single"], device="cpu", precision="fp32")
    body = clip.read_bytes()
    with TestClient(create_app(tagger, ServeSettings())) as c:

        @runs
        @given(text=numbers_as_typed())
        def check(text):
            with time_limit():
                answer = c.post("/api/predict", params={"timeline": "true", param: text}, content=body)
                start = c.post("/api/attention", params={"start": text}, content=body) if param == "window" else None
            for a in (answer, start):
                if a is not None:
                    assert a.status_code == 200 or 400 <= a.status_code < 500, (param, text, a.status_code, a.text)
                    if a.status_code != 200:
                        assert isinstance(a.json()["detail"], str), a.text

        check()
