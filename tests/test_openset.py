"""Open-set recognition ("none of these"): the scores and the threshold (ast_audio.infer.openset),
calibrate --open-set into the checkpoint, and what predict, the timeline and the service answer."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main
from factories import toy_clip, toy_sequence, write_audio

from ast_audio.checkpoints import load_model, save_checkpoint
from ast_audio.errors import ConfigError
from ast_audio.infer import AudioTagger, FrameScores
from ast_audio.infer.openset import (
    DEFAULT_TPR,
    OpenSet,
    auroc,
    calibrate,
    calibration,
    choose_threshold,
    knownness,
    probe,
)

# --------------------------------------------------------------------------- scores and threshold


def test_energy_is_the_log_sum_exp_of_the_logits_and_max_prob_the_top_softmax_probability():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1000.0, 999.0, -1000.0]])
    expected_lse = [math.log(math.exp(2) + 1 + math.exp(-1)), math.log(3), 1000 + math.log(1 + math.exp(-1))]
    np.testing.assert_allclose(knownness(logits, "energy"), expected_lse)
    np.testing.assert_allclose(knownness(logits, "max_prob"), [math.exp(2) / math.exp(expected_lse[0]), 1 / 3,
                                                               1 / (1 + math.exp(-1))])  # fmt: skip
    assert np.isfinite(knownness(logits, "energy")).all()  # large logits do not overflow
    # energy sees the scale that the softmax throws away: the same probabilities, higher logits
    assert knownness(logits[:1] + 5, "energy")[0] == pytest.approx(expected_lse[0] + 5)
    assert knownness(logits[:1] + 5, "max_prob")[0] == pytest.approx(knownness(logits[:1], "max_prob")[0])
    with pytest.raises(ConfigError, match="unknown open-set score 'entropy'"):
        knownness(logits, "entropy")


@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 20, 101])
def test_the_threshold_keeps_at_least_the_rate_of_its_clips_and_is_the_highest_that_does(tpr, n):
    rng = np.random.default_rng(n)
    for scores in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float)):  # ties too
        t = choose_threshold(scores, tpr)
        assert np.mean(scores >= t) >= tpr - 1e-12  # by construction
        assert np.mean(scores > t) < tpr  # any higher threshold would keep fewer than the rate
        assert t in scores


def test_threshold_and_auroc_refuse_what_they_cannot_compute():
    for tpr in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="true-positive rate must be in"):
            choose_threshold([1.0, 2.0], tpr)
    with pytest.raises(ConfigError, match="at least one known clip"):
        choose_threshold([], 0.95)
    with pytest.raises(ConfigError, match="finite scores"):
        choose_threshold([1.0, float("nan")], 0.95)
    with pytest.raises(ConfigError, match="at least one known and one unknown"):
        auroc([1.0], [])


def test_auroc_is_the_chance_that_a_known_clip_outscores_an_unknown_one():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([1, 3], [2]) == 0.5
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1, 1, 50), rng.normal(0, 1, 40)
    pairs = (known[:, None] > unknown[None, :]).mean()  # continuous scores: no ties
    assert auroc(known, unknown) == pytest.approx(pairs)


def test_the_calibration_record_says_the_score_the_threshold_and_what_it_kept():
    scores = np.arange(20.0)
    record = calibration(scores, "energy", 0.9)
    assert record == {"score": "energy", "threshold": 2.0, "tpr": 0.9, "clips": 20, "kept": 0.9}
    json.dumps(record)  # stored in the checkpoint's JSON metadata


def test_open_set_of_a_checkpoint_reads_its_calibration_and_none_label():
    labels = ["dog", "cat", "other"]
    assert OpenSet.of({}, labels) is None  # nothing recorded: the default behaviour stays
    found = OpenSet.of({"open_set": {"score": "energy", "threshold": 1.5, "tpr": 0.95}, "none_label": "other"}, labels)
    assert found == OpenSet("energy", 1.5, 0.95, 2)
    np.testing.assert_array_equal(found.known(np.array([2.0, 1.0, 2.0]), np.array([0, 0, 2])), [True, False, False])
    only_none = OpenSet.of({"none_label": "other"}, labels)
    assert only_none.threshold is None and only_none.known(-1e9, 1) and not only_none.known(1e9, 2)
    with pytest.raises(ConfigError, match=r"m\.safetensors: none_label 'bird' is not one of the checkpoint's labels"):
        OpenSet.of({"none_label": "bird"}, labels, "m.safetensors")
    for bad in ({"score": "energy"}, {"score": "energy", "threshold": "high"}, {"score": "entropy", "threshold": 1},
                {"score": "energy", "threshold": float("nan")}):  # fmt: skip
        with pytest.raises(ConfigError, match="m.safetensors: open_set metadata"):
            OpenSet.of({"open_set": bad}, labels, "m.safetensors")
    assert found.reason(False, 1.0) == "energy 1.0000 < threshold 1.5000"  # what predict's table prints
    assert found.reason(False, 2.0) == "energy 2.0000 >= threshold 1.5000; the none label is on top"
    assert only_none.reason(False, None) == "the none label is on top"
    assert only_none.reason(True, None) == "the top label is not the none label"
    assert probe("energy").known(-1e300, 0)  # the calibration probe calls everything known
    with pytest.raises(ConfigError, match="unknown open-set score"):
        probe("entropy")


# --------------------------------------------------------------------------- calibrate, predict, timeline


@pytest.fixture(scope="module")
def calibrated(toy_model, tmp_path_factory):
    """The toy model calibrated by ``calibrate --open-set --tpr 0.9`` on its validation clips:
    ``(checkpoint, validation wavs)``."""
    toy = toy_model.parents[2] / "toy"
    out = tmp_path_factory.mktemp("open-set") / "calibrated.safetensors"
    done = run_main("calibrate", "--open-set", "--tpr", "0.9", "--checkpoint", toy_model, "--data", toy / "val.json",
                    "--label-csv", toy / "labels.csv", "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "keeps" in done.stdout and "target 90%" in done.stdout
    return out, [item["wav"] for item in json.loads((toy / "val.json").read_text())["data"]]


def test_calibrate_open_set_stores_a_threshold_that_keeps_the_rate_of_its_own_clips(toy_model, calibrated):
    out, wavs = calibrated
    record = load_model(out).info.extra["open_set"]
    assert record["score"] == "max_prob" and record["tpr"] == 0.9 and record["clips"] == len(wavs) == 9
    assert record["kept"] >= 0.9
    assert "open_set" not in load_model(toy_model).info.extra  # the source is left alone
    tagger = AudioTagger(out, device="cpu", precision="fp32")  # calibration's own precision
    assert tagger.open_set == OpenSet("max_prob", record["threshold"], 0.9)
    results = tagger.predict(wavs)
    assert np.mean([p.known for p in results]) >= 0.9  # what the threshold guarantees on these clips
    assert [p.open_set_score >= record["threshold"] for p in results] == [p.known for p in results]
    for p in results:
        assert p.label == ("unknown" if not p.known else p.labels[0][0])
        assert p.to_json()["known"] == p.known and p.to_json()["label"] == p.label
    assert calibrate(tagger, wavs, "max_prob", 0.9) == record  # the library call behind the command
    assert tagger.open_set.threshold == record["threshold"]  # and the tagger's own open set is back
    assert AudioTagger(out, device="cpu", open_set=False).predict(wavs[0]).known is None  # --no-open-set
    plain = AudioTagger(toy_model, device="cpu").predict(wavs[0])  # no calibration: results as they were
    assert plain.known is None and {"known", "label", "open_set_score"}.isdisjoint(plain.to_json())


def test_an_unknown_sound_answers_unknown_in_predict_and_makes_no_event_in_the_timeline(calibrated, tmp_path):
    out, _ = calibrated
    model = load_model(out)
    never = replace(model.info, extra={**model.info.extra, "open_set": {"score": "max_prob", "threshold": 1.01}})
    model.info = never  # a threshold no softmax reaches: every sound is "none of these"
    strict = save_checkpoint(model, tmp_path / "strict.safetensors")
    clip = write_audio(tmp_path / "low.wav", toy_clip(0, np.random.default_rng(3)), 16000)
    for checkpoint, known in ((strict, False), (out, True)):
        tagger = AudioTagger(checkpoint, device="cpu", precision="fp32")
        assert tagger.predict(clip).known is known
        timeline = tagger.timeline(toy_sequence([0, 2, 1], 1.5, seed=4), sample_rate=16000)
        assert timeline.known is not None and bool(timeline.known.any()) is known
        assert bool(timeline.events) is known  # unknown frames are no class's
        windows = tagger.timeline(toy_sequence([0, 2, 1], 1.5, seed=4), 1.0, 0.5, sample_rate=16000, method="windows")
        assert any(w.known for w in windows.windows) is known and bool(windows.events) is known
        audio = toy_sequence([0, 2, 1], 1.5, seed=4)
        live = list(tagger.stream((audio[i : i + 1600] for i in range(0, audio.size, 1600)), 16000))
        frames = [item for item in live if isinstance(item, FrameScores)]
        assert [f.known for f in frames] == timeline.known.tolist()  # live answers as the timeline does
        assert (len(live) > len(frames)) is known  # event changes only where frames are known
    printed = run_main("predict", clip, "--checkpoint", strict, "--format", "json", "--precision", "fp32")
    (obj,) = json.loads(printed.stdout)
    assert obj["known"] is False and obj["label"] == "unknown" and obj["open_set_score"] < 1.01
    assert obj["labels"][0]["label"] == "low tone"  # the nearest class stays listed
    table = run_main("predict", clip, "--checkpoint", strict, "--precision", "fp32").stdout
    assert "answer: unknown  (max_prob" in table and "< threshold 1.0100" in table
    csv_out = run_main("predict", clip, "--checkpoint", strict, "--format", "csv", "--precision", "fp32").stdout
    assert csv_out.splitlines()[0] == "path,rank,label,score,known" and csv_out.splitlines()[1].endswith(",false")
    off = run_main("predict", clip, "--checkpoint", strict, "--format", "json", "--no-open-set")
    assert "known" not in json.loads(off.stdout)[0]
    timeline = run_main("predict", toy_sequence_file(tmp_path), "--checkpoint", strict, "--timeline", "--format", "json")
    (tl,) = json.loads(timeline.stdout)
    assert tl["events"] == [] and all(w["known"] is False and w["label"] == "unknown" for w in tl["windows"])


def toy_sequence_file(folder):
    return write_audio(folder / "sequence.wav", toy_sequence([0, 2, 1], 1.5, seed=4), 16000)


def test_a_top_prediction_of_the_none_label_is_unknown_and_makes_no_event(toy_model, tmp_path):
    model = load_model(toy_model)
    model.info = replace(model.info, extra={**model.info.extra, "none_label": "noise"})  # as recipe folder records it
    with_none = save_checkpoint(model, tmp_path / "none.safetensors")
    tagger = AudioTagger(with_none, device="cpu", precision="fp32")
    assert tagger.open_set == OpenSet(none_index=2) and 2 in tagger.ignored
    rng = np.random.default_rng(7)
    clips = [toy_clip(kind, rng) for kind in (0, 1, 2, 2)]
    results = tagger.predict(clips, sample_rate=16000)
    for p in results:  # the threshold plays no part: the none label alone decides
        assert p.known is (p.labels[0][0] != "noise") and p.open_set_score is None
    timeline = tagger.timeline(toy_sequence([2, 0, 2], 1.5, seed=5), sample_rate=16000)
    assert all(e.label != "noise" for e in timeline.events)
    with pytest.raises(ConfigError, match="none_label 'bird' is not one of the checkpoint's labels"):
        model.info = replace(model.info, extra={"none_label": "bird"})
        AudioTagger(model, device="cpu")


def test_calibrate_open_set_refuses_what_it_cannot_calibrate(toy_model, checkpoints, tmp_path):
    toy = toy_model.parents[2] / "toy"
    missing = run_main("calibrate", "--open-set", "--checkpoint", toy_model, "--data", toy / "val.json",
                       "--out", tmp_path / "x.safetensors")  # fmt: skip
    assert missing.returncode != 0 and "needs --data and --label-csv" in missing.stderr
    multi = run_main("calibrate", "--open-set", "--checkpoint", checkpoints["multi"], "--data", toy / "val.json",
                     "--label-csv", toy / "labels.csv", "--out", tmp_path / "x.safetensors")  # fmt: skip
    assert multi.returncode != 0 and "single-label (softmax)" in multi.stderr
    (tmp_path / "other.csv").write_text('index,mid,display_name\n0,/m/low,"low tone"\n1,/m/high,"high tone"\n'
                                        '2,/m/noise,"hiss"\n')  # fmt: skip
    stray = run_main("calibrate", "--open-set", "--checkpoint", toy_model, "--data", toy / "val.json",
                     "--label-csv", tmp_path / "other.csv", "--out", tmp_path / "x.safetensors")  # fmt: skip
    assert stray.returncode != 0 and "label 'hiss' is not one of the checkpoint's labels" in stray.stderr
    rate = run_main("calibrate", "--open-set", "--tpr", "1.5", "--checkpoint", toy_model, "--data", toy / "val.json",
                    "--label-csv", toy / "labels.csv")  # fmt: skip
    assert rate.returncode == 2 and "must be in (0, 1]" in rate.stderr
    assert DEFAULT_TPR == 0.95



def test_sounds_of_classes_never_trained_are_unknown_where_the_model_has_a_none_label(toy_model, tmp_path):
    """The easy case: a tone classifier whose third class, broadband noise, is its none label (as
    a background folder makes it) answers unknown for broadband sounds it never heard, and keeps
    the label of tones of its own classes."""
    model = load_model(toy_model)
    model.info = replace(model.info, extra={**model.info.extra, "none_label": "noise"})
    tagger = AudioTagger(save_checkpoint(model, tmp_path / "none.safetensors"), device="cpu", precision="fp32")
    rng = np.random.default_rng(11)
    tones = [(kind, toy_clip(kind, rng)) for kind in (0, 1) for _ in range(5)]
    results = tagger.predict([clip for _, clip in tones], sample_rate=16000)
    right = [p.known and p.label == ("low tone", "high tone")[kind] for (kind, _), p in zip(tones, results, strict=True)]
    assert np.mean(right) >= 0.8
    t = np.arange(16000) / 16000
    squares = [0.9 * np.sign(np.sin(2 * np.pi * f * t)) for f in (50, 200, 500, 1000, 2000)]  # never trained
    loud = [np.clip(rng.standard_normal(16000), -1, 1) for _ in range(3)]  # full-scale noise: louder than any clip
    rumble = [np.convolve(rng.standard_normal(16000), np.ones(50) / 50 * 3, "same") for _ in range(3)]  # low-passed
    unseen = [x.astype("float32") for x in squares + loud + rumble]
    answers = tagger.predict(unseen, sample_rate=16000)
    assert np.mean([p.label == "unknown" for p in answers]) >= 0.8
    assert all(p.labels[0][0] in tagger.labels for p in answers)  # the nearest class stays listed


def test_the_service_answers_with_the_open_set_as_predict_does(calibrated, tmp_path):
    from fastapi.testclient import TestClient

    from ast_audio.serve import ServeSettings, create_app

    out, wavs = calibrated
    model = load_model(out)
    model.info = replace(model.info, extra={**model.info.extra, "open_set": {"score": "max_prob", "threshold": 1.01}})
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    recording = toy_sequence_file(tmp_path)
    with TestClient(create_app(tagger, ServeSettings())) as c:
        answer = c.post("/api/predict", content=Path(wavs[0]).read_bytes()).json()
        assert answer["known"] is False and answer["label"] == "unknown"
        assert answer == {**tagger.predict(wavs[0]).to_json(), "path": answer["path"]}
        timeline = c.post("/api/predict?timeline=true&median=0.5", content=recording.read_bytes()).json()
        assert timeline["events"] == [] and {w["label"] for w in timeline["windows"]} == {"unknown"}
