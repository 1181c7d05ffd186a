"""One file, one set of events: ``predict --timeline`` (to stdout and into ``--out DIR``), the
Python API (:meth:`AudioTagger.timeline`) and the service (``POST /api/predict?timeline=true``,
in-process) all take their frames and post-processing from the same defaults, so they find
the same events; and every flag that changes the events changes them on every path.

The model is the trained toy model (low tone, high tone, noise) in fp32 everywhere, so no
path can choose another precision than the others.
"""

from __future__ import annotations

import json

import pytest
from conftest import cli_in_process
from factories import SR, toy_sequence, write_audio
from fastapi.testclient import TestClient

from ast_audio.infer import AudioTagger, PostProcessing
from ast_audio.serve import create_app

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, HIGH, NOISE = 0, 1, 2
FP32 = ("--precision", "fp32", "--device", "cpu", "-q")


@pytest.fixture(scope="module")
def tagger(toy_model):
    return AudioTagger(toy_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Low tone, noise, high tone, low tone: 2 s each, as a 16-bit WAV."""
    path = tmp_path_factory.mktemp("parity") / "scene.wav"
    return write_audio(path, toy_sequence([LOW, NOISE, HIGH, LOW], 2.0, seed=7), SR, subtype="PCM_16")


def events_of(timeline: dict) -> list[tuple[str, float, float]]:
    return [(e["label"], e["start"], e["end"]) for e in timeline["events"]]


def cli_stdout(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert cli_in_process("predict", *args, "--timeline", "--format", "json", *FP32) == 0
    return json.loads(capsys.readouterr().out)


def cli_out_dir(capsys, out, *args) -> list[dict]:
    capsys.readouterr()
    assert cli_in_process("predict", *args, "--timeline", "--out", out, *FP32) == 0
    assert "1 new files, 0 from an earlier run" in capsys.readouterr().out
    (shard,) = out.glob("predictions-*.jsonl")
    return [json.loads(line) for line in shard.read_text().splitlines()]


def service(tagger, path, query: str = "") -> dict:
    with TestClient(create_app(tagger)) as c:
        answer = c.post(f"/api/predict?timeline=true{query}", files={"file": (path.name, path.read_bytes())})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_cli_the_api_and_the_service_find_the_same_events(tagger, toy_model, scene, tmp_path, capsys):
    api = tagger.timeline(scene).to_json()
    (stdout,) = cli_stdout(capsys, scene, "--checkpoint", toy_model)
    (sharded,) = cli_out_dir(capsys, tmp_path / "out", scene, "--checkpoint", toy_model)
    served = service(tagger, scene)

    expected = events_of(api)
    assert {label for label, *_ in expected} == {"low tone", "noise", "high tone"}  # distinct sounds, each found
    assert events_of(stdout) == events_of(sharded) == events_of(served) == expected
    grid = tagger.frame_grid()
    assert len(served["windows"]) == len(api["windows"]) == 80  # one frame every 0.1 s over 8 s
    assert served["windows"][1]["start"] - served["windows"][0]["start"] == pytest.approx(grid.hop)
    assert stdout["windows"] == sharded["windows"] == api["windows"] == served["windows"]


@pytest.mark.parametrize(
    ("flags", "query", "options"),
    [
        (["--min-duration", "2.5"], "&min_duration=2.5", dict(post=PostProcessing(min_duration=2.5))),
        (["--median", "0", "--min-gap", "0", "--threshold", "0.9"], "&median=0&min_gap=0&threshold=0.9",
         dict(post=PostProcessing(threshold=0.9, median=0, min_gap=0))),
        (["--window", "1", "--hop", "0.25", "--off-ratio", "0.5"], "&window=1&hop=0.25&off_ratio=0.5",
         dict(window=1.0, hop=0.25, post=PostProcessing(off_ratio=0.5))),
    ],
)  # fmt: skip
def test_each_flag_that_changes_the_events_changes_them_on_every_path(
    tagger, toy_model, scene, tmp_path, capsys, flags, query, options
):
    default = events_of(tagger.timeline(scene).to_json())
    expected = events_of(tagger.timeline(scene, **options).to_json())
    assert expected != default  # the flags matter for this file
    (stdout,) = cli_stdout(capsys, scene, "--checkpoint", toy_model, *flags)
    (sharded,) = cli_out_dir(capsys, tmp_path / "out", scene, "--checkpoint", toy_model, *flags)
    assert events_of(stdout) == events_of(sharded) == events_of(service(tagger, scene, query)) == expected


def test_events_windows_reaches_the_shards(tagger, toy_model, scene, tmp_path, capsys):
    flags = ["--events", "windows", "--window", "2", "--hop", "1", "--threshold", "0.6"]
    expected = tagger.timeline(scene, 2.0, 1.0, threshold=0.6, method="windows").to_json()
    assert events_of(expected) != events_of(tagger.timeline(scene).to_json())
    (stdout,) = cli_stdout(capsys, scene, "--checkpoint", toy_model, *flags)
    (sharded,) = cli_out_dir(capsys, tmp_path / "out", scene, "--checkpoint", toy_model, *flags)
    assert stdout == sharded == {**expected, "path": str(scene)}
    assert [(w["start"], w["end"]) for w in sharded["windows"]][:2] == [(0.0, 2.0), (1.0, 3.0)]
