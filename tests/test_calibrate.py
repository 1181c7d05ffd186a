"""Per-class thresholds: chosen on labelled clips, stored in the checkpoint, used by predict and timeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_main
from factories import SR, loudness_model, noise, write_audio

from ast_audio.checkpoints import load_model, save_checkpoint
from ast_audio.features import InputContract
from ast_audio.infer import AudioTagger
from ast_audio.infer.events import calibrate_thresholds


def test_thresholds_maximise_each_class_f1():
    scores = np.array([[0.9, 0.2], [0.7, 0.35], [0.4, 0.3], [0.1, 0.1], [0.3, 0.6]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [0, 0]])
    got = calibrate_thresholds(scores, targets)
    # class 0: anything between 0.4 and 0.7 separates perfectly -> the midpoint 0.55
    # class 1: positives 0.3 and 0.35 under a negative 0.6: 0.25 says yes to all three (F1 2*2/(3+2) = 0.8),
    # 0.325 to 0.35 and 0.6 (F1 0.5), 0.475 to 0.6 alone (F1 0)
    assert got[0] == pytest.approx(0.55)
    assert got[1] == pytest.approx(0.25)
    assert calibrate_thresholds(scores, np.zeros_like(targets)).tolist() == [0.5, 0.5]  # no positives: default


def test_calibrate_command_stores_thresholds_that_predict_and_timeline_use(tmp_path):
    model_path = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    (tmp_path / "labels.csv").write_text('index,mid,display_name\n0,/m/l,"loud"\n1,/m/q,"quiet"\n2,/m/n,"never"\n')
    entries = []
    for i in range(3):
        for level, mid in ((0.3, "/m/l"), (1e-4, "/m/q")):
            path = write_audio(tmp_path / f"{mid[-1]}{i}.wav", noise(1.0, level, seed=i), SR)
            entries.append({"wav": str(path), "labels": mid})
    (tmp_path / "valid.json").write_text(json.dumps({"data": entries}))
    out_path = tmp_path / "calibrated.safetensors"
    out = run_main("calibrate", "--checkpoint", model_path, "--data", tmp_path / "valid.json", "--label-csv",
                  tmp_path / "labels.csv", "--out", out_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    thresholds = load_model(out_path).info.thresholds
    assert len(thresholds) == 3 and thresholds[2] == 0.5  # "never" has no positive clip
    assert 0 < thresholds[0] < 1 and 0 < thresholds[1] < 1
    assert load_model(model_path).info.thresholds is None  # the source is left alone
    contract = load_model(out_path).input_contract  # the contract carries them, and reads back from its JSON
    assert contract.thresholds == tuple(thresholds) and InputContract.from_dict(contract.to_dict()) == contract
    tagger = AudioTagger(out_path, device="cpu", precision="fp32")  # the precision calibrate measured in
    assert tagger.thresholds == thresholds
    p = tagger.predict(noise(1.0, 0.3, seed=9), sample_rate=SR)
    assert p.present == ["loud"] and p.to_json()["present"] == ["loud"]
    assert AudioTagger(model_path, device="cpu").predict(noise(1.0, 0.3, seed=9), sample_rate=SR).present is None
    # timeline takes them as its on thresholds: above 1, a class never fires
    strict = load_model(out_path)
    strict.info.thresholds = [1.01, 1.01, 1.01]
    assert AudioTagger(strict, device="cpu").timeline(noise(3.0, 0.3), sample_rate=SR).events == []
    assert AudioTagger(strict, device="cpu").timeline(noise(3.0, 0.3), sample_rate=SR, threshold=0.5).events


def test_calibrate_scenes_picks_event_thresholds_that_find_the_events(tmp_path):
    """A loudness model whose "loud" probability only reaches 0.38 on loud audio (0.09 on quiet):
    at 0.5 it finds no loud event; the calibrated threshold must find it."""
    import torch

    model = loudness_model(100)
    with torch.no_grad():  # its logit is +-10 from the head's weight: scaled to +-0.896, shifted by -1.40
        head = model.mlp_head[1]
        head.weight[0] *= 0.0896
        head.bias[0] = -1.40  # sigmoid(0.896 - 1.40) = 0.377, sigmoid(-0.896 - 1.40) = 0.091
    ckpt = save_checkpoint(model, tmp_path / "weak.safetensors")
    scenes = tmp_path / "scenes"
    audio = np.concatenate([noise(4, 1e-4, seed=1), noise(3, 0.3, seed=2), noise(3, 1e-4, seed=3)]).astype(np.float32)
    (scenes / "audio").mkdir(parents=True)
    write_audio(scenes / "audio" / "s.wav", audio, SR)
    (scenes / "reference.tsv").write_text(
        "filename\tonset\toffset\tevent_label\ns.wav\t0\t4\tquiet\ns.wav\t4\t7\tloud\ns.wav\t7\t10\tquiet\n"
    )
    out = run_main("calibrate", "--checkpoint", ckpt, "--scenes", scenes, "--out", tmp_path / "cal.safetensors")
    assert out.returncode == 0, out.stderr
    # before: quiet's two events found, loud's missed: TP 2, FP 0, FN 1, F1 = 2*2 / (2 + 3) = 0.8
    assert "event F1: 0.8000 with every class at 0.5, 1.0000 calibrated" in out.stdout, out.stdout
    thresholds = load_model(tmp_path / "cal.safetensors").info.thresholds
    # loud: every candidate between 0.09 and 0.38 finds it (the hysteresis' off, 0.75 x, stays above 0.09
    # from 0.15 on); ties go to the highest, 0.35; "never" has no reference event: 0.5
    assert thresholds[0] == 0.35 and thresholds[2] == 0.5, thresholds
    # fp32, as calibrate measured: "loud" peaks at 0.377, 0.027 above its threshold (int8 moves it up to 0.06)
    tl = AudioTagger(tmp_path / "cal.safetensors", device="cpu", precision="fp32").timeline(str(scenes / "audio" / "s.wav"))
    assert [e.label for e in tl.events] == ["quiet", "loud", "quiet"]
    both = run_main("calibrate", "--checkpoint", ckpt, "--scenes", scenes, "--data", "x.json")
    assert both.returncode == 2 and "either --data (clips) or --scenes DIR" in both.stderr


def test_event_calibration_never_lowers_a_class_f1():
    """0.5 is one of the candidates and each class keeps its best: no class's event F1 on the
    calibration recordings can fall (the overall, micro-averaged F1 can: a small class may
    trade false alarms for its events)."""
    from ast_audio.infer.events import calibrate_event_thresholds

    rng = np.random.default_rng(3)
    labels, hop, recordings, reference = ["a", "b", "c"], 0.1, [], []
    for k in range(3):
        scores = rng.uniform(0, 0.3, (300, 3))
        for c in range(3):
            for _ in range(3):
                start = int(rng.integers(0, 270))
                length = int(rng.integers(10, 30))
                level = rng.uniform(0.3, 0.9)
                scores[start : start + length, c] += level
                reference.append({"filename": f"r{k}.wav", "onset": start * hop, "offset": (start + length) * hop,
                                  "event_label": labels[c]})  # fmt: skip
        recordings.append((f"r{k}.wav", np.clip(scores, 0, 1), 30.0))
    got = calibrate_event_thresholds(recordings, reference, hop, labels)
    assert set(got.class_f1) == set(labels)
    assert all(after >= before for before, after in got.class_f1.values()), got.class_f1
    assert any(after > before for before, after in got.class_f1.values()), got.class_f1  # 0.5 is not best everywhere
    assert all(t in [round(0.05 * i, 2) for i in range(1, 20)] for t in got.thresholds)
