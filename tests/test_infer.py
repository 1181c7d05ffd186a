"""AudioTagger on real files: predict, windows, timelines and events, embeddings, ensembles, attention."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from factories import (
    MEAN,
    SR,
    STD,
    loudness_model,
    multilabel_model,
    noise,
    single_label_model,
    tiny_ast,
    write_audio,
)

from ast_audio import ASTModel, AudioError, ConfigError, FeatureConfig
from ast_audio.audio.io import load_audio
from ast_audio.base.runtime import pick_device
from ast_audio.checkpoints import export_original
from ast_audio.features import waveform_to_input
from ast_audio.infer import (
    AudioTagger,
    Window,
    attention_grid,
    grid_to_frames,
    merge_events,
    window_spans,
)

WINDOW_300 = 400 + 299 * 160  # samples of one 300-frame model input (3.015 s)


pytestmark = pytest.mark.usefixtures("one_thread")


def features_of(model: ASTModel, waveform: torch.Tensor) -> torch.Tensor:
    cfg = FeatureConfig(num_mel_bins=128, target_length=model.config.input_tdim, mean=MEAN, std=STD)
    return waveform_to_input(waveform, cfg)


def manual_probs(model: ASTModel, waveform: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits = model(features_of(model, waveform).unsqueeze(0))[0]
    return (torch.sigmoid(logits) if model.info.multilabel else torch.softmax(logits, -1)).numpy()


# --------------------------------------------------------------------------- windows and events


def test_window_spans_cover_with_the_last_aligned_to_the_end():
    assert window_spans(50, 100, 50) == [(0, 50)]
    assert window_spans(100, 100, 50) == [(0, 100)]
    assert window_spans(250, 100, 50) == [(0, 100), (50, 150), (100, 200), (150, 250)]
    assert window_spans(260, 100, 50) == [(0, 100), (50, 150), (100, 200), (150, 250), (160, 260)]
    with pytest.raises(ConfigError):
        window_spans(10, 0, 5)


def test_merge_events_joins_consecutive_windows_per_label():
    labels = ["speech", "music", "dog"]
    scores = np.array(
        [[0.9, 0.1, 0.0], [0.8, 0.6, 0.0], [0.2, 0.7, 0.0], [0.7, 0.9, 0.0], [0.95, 0.2, 0.51]],
        dtype=np.float32,
    )
    windows = [Window(5.0 * i, 5.0 * i + 10, s) for i, s in enumerate(scores)]
    events = merge_events(windows, labels, threshold=0.5)
    got = [(e.label, e.start, e.end, round(e.peak, 2)) for e in events]
    assert got == [
        ("speech", 0.0, 15.0, 0.9),
        ("music", 5.0, 25.0, 0.9),
        ("speech", 15.0, 30.0, 0.95),
        ("dog", 20.0, 30.0, 0.51),
    ]
    assert merge_events([], labels) == []


# --------------------------------------------------------------------------- predict


def test_predict_real_files_single_and_multilabel(files, checkpoints):
    paths = [files["wav"], files["flac"], files["mp3"]]
    single = AudioTagger(checkpoints["single"], device="cpu", precision="fp32")
    preds = single.predict(paths, top_k=2)
    assert [p.path for p in preds] == [str(p) for p in paths]
    for p in preds:
        assert len(p.labels) == 2 and p.labels[0][1] >= p.labels[1][1]
        assert {name for name, _ in p.labels} <= {"tone", "noise", "chirp"}
        assert p.scores.shape == (3,) and p.scores.sum() == pytest.approx(1.0, abs=1e-5)  # softmax
    assert preds[1].duration == pytest.approx(1.0, abs=1e-3)  # 44.1 kHz flac, resampled

    multi = AudioTagger(checkpoints["multi"], device="cpu", precision="fp32")
    p = multi.predict(files["mp3"])  # one path -> one Prediction
    model = multilabel_model()
    wave = load_audio(files["mp3"])  # 1.5 s > 1.3 s: two model windows, max over them
    windows = [wave[a:b] for a, b in window_spans(len(wave), 400 + 127 * 160, (400 + 127 * 160) // 2)]
    expected = np.max([manual_probs(model, w) for w in windows], axis=0)
    np.testing.assert_allclose(p.scores, expected, atol=1e-5)
    assert not np.isclose(p.scores.sum(), 1.0)  # sigmoid, independent scores


def test_short_clip_is_padded_as_in_training(files):
    model = single_label_model()
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    p = tagger.predict(files["short"])
    assert p.spans == [(0.0, 0.5)]
    wave = load_audio(files["short"])
    feats = features_of(model, wave)
    raw = waveform_to_input(wave, FeatureConfig(target_length=300), normalized=False)
    assert feats.shape == raw.shape == (300, 128)
    assert torch.all(raw[:48] != 0) and torch.all(raw[48:] == 0)  # 48 real frames, then zero frames
    np.testing.assert_allclose(p.scores, manual_probs(model, wave), atol=1e-5)


def test_long_clip_is_windowed_never_cut(files):
    model = single_label_model()
    tagger = AudioTagger(model, device="cpu", precision="fp32", batch_size=4)
    p = tagger.predict(files["long"])
    wave = load_audio(files["long"])
    spans = window_spans(len(wave), WINDOW_300, WINDOW_300 // 2)
    assert len(spans) == len(p.spans) == 6
    assert p.spans[0][0] == 0.0 and p.spans[-1][1] == pytest.approx(10.0)
    assert all(b - a == pytest.approx(WINDOW_300 / SR) for a, b in p.spans)
    per_window = np.stack([manual_probs(model, wave[a:b]) for a, b in spans])
    np.testing.assert_allclose(p.scores, per_window.max(axis=0), atol=1e-5)
    mean = tagger.predict(files["long"], aggregate="mean")
    np.testing.assert_allclose(mean.scores, per_window.mean(axis=0), atol=1e-5)
    hop = tagger.predict(files["long"], hop=3.0)
    assert len(hop.spans) == 4  # starts 0, 3, 6 and the last aligned to the end
    with pytest.raises(ConfigError):
        tagger.predict(files["long"], aggregate="median")


def test_waveforms_and_batches_match_files(files):
    tagger = AudioTagger(single_label_model(), device="cpu", precision="fp32")  # batched vs alone: fp32
    wave = load_audio(files["wav"]).numpy()
    from_file = tagger.predict(files["wav"])
    from_array = tagger.predict(wave, SR)
    np.testing.assert_allclose(from_array.scores, from_file.scores, atol=1e-6)
    assert from_array.path is None
    batch = tagger.predict(np.stack([wave, wave[::-1].copy()]), SR)
    assert len(batch) == 2
    np.testing.assert_allclose(batch[0].scores, from_file.scores, atol=1e-6)
    at_8k = tagger.predict(load_audio(files["wav"], sample_rate=8000), 8000)  # resampled to 16 kHz
    assert at_8k.duration == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="sample_rate"):
        tagger.predict(wave)


def test_audioset_names_for_an_original_checkpoint(tmp_path, files):
    path = export_original(tiny_ast(label_dim=527, input_tdim=1024), tmp_path / "audioset.pth")
    tagger = AudioTagger(path, device="cpu")  # load_model reads 527 outputs as AudioSet's
    assert len(tagger.labels) == 527 and tagger.labels[:2] == ["Speech", "Male speech, man speaking"]
    p = tagger.predict(files["short"], top_k=3)
    assert all(name in tagger.labels for name, _ in p.labels) and tagger.multilabel


def test_device_choice_and_bf16_autocast(files):
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            AudioTagger(single_label_model(), device="cuda")
    fp32 = AudioTagger(single_label_model(), device="cpu", precision="fp32").predict(files["short"])
    bf16 = AudioTagger(single_label_model(), device="cpu", autocast=True).predict(files["short"])
    np.testing.assert_allclose(bf16.scores, fp32.scores, atol=0.05)


def test_bad_file_raises_or_is_reported(tmp_path, files):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    tagger = AudioTagger(single_label_model(), device="cpu")
    with pytest.raises(AudioError, match="bad.wav"):
        tagger.predict([files["wav"], bad])
    errors = []
    preds = tagger.predict([files["wav"], bad, files["short"]], on_error=errors.append)
    assert [p.path for p in preds] == [str(files["wav"]), str(files["short"])]
    assert len(errors) == 1 and errors[0].path == str(bad)


def test_missing_statistics_fall_back_to_audioset_with_one_warning(caplog):
    model = tiny_ast(label_dim=4, input_tdim=128)
    with caplog.at_level(logging.WARNING, logger="ast_audio.infer"):
        tagger = AudioTagger(model, device="cpu")
    assert len(caplog.records) == 1 and "AudioSet" in caplog.records[0].getMessage()
    feats = tagger.members[0].features
    assert (feats.mean, feats.std) == (MEAN, STD)
    assert tagger.labels == ["class 0", "class 1", "class 2", "class 3"]


# --------------------------------------------------------------------------- timeline


def test_timeline_of_95_seconds_covers_it_and_merges_events(tmp_path):
    quiet, loud = noise(30.0, level=1e-4, seed=6), noise(30.0, level=0.3, seed=7)
    path = tmp_path / "hour.flac"  # 0-30 s quiet, 30-60 s loud, 60-95 s quiet
    write_audio(path, np.concatenate([quiet, loud, noise(35.0, level=1e-4, seed=8)]), SR)
    tagger = AudioTagger(loudness_model(300), device="cpu", batch_size=16)
    tl = tagger.timeline(path, window=10.0, hop=5.0, method="windows")
    assert tl.duration == pytest.approx(95.0)
    starts = [w.start for w in tl.windows]
    assert starts == [5.0 * i for i in range(18)]  # 0..85: the last one ends at 95
    assert all(w.end - w.start == pytest.approx(10.0) for w in tl.windows)
    assert tl.windows[-1].end == pytest.approx(95.0)
    assert tl.scores.shape == (18, 3)
    got = [(e.label, e.start, e.end) for e in tl.events]
    # A 10 s window holds six 3 s model windows (max over them): a window fires "loud" when
    # one model window is mostly loud, so the event reaches 5 s beyond the loud part.
    assert got == [("quiet", 0.0, 35.0), ("loud", 25.0, 65.0), ("quiet", 55.0, 95.0)]
    assert all(e.peak > 0.99 for e in tl.events)


def test_timeline_windows_shorter_than_the_model_are_padded():
    tagger = AudioTagger(single_label_model(), device="cpu", precision="fp32")
    wave = noise(4.0, seed=9)
    tl = tagger.timeline(wave, window=1.0, hop=1.0, sample_rate=SR, threshold=0.0, method="windows")
    assert [(w.start, w.end) for w in tl.windows] == [(float(i), float(i + 1)) for i in range(4)]
    expected = manual_probs(single_label_model(), torch.from_numpy(wave[SR : 2 * SR]))
    np.testing.assert_allclose(tl.windows[1].scores, expected, atol=1e-5)
    assert {e.label for e in tl.events} == {"tone", "noise", "chirp"}  # threshold 0: one event each
    assert all((e.start, e.end) == (0.0, 4.0) for e in tl.events)


# --------------------------------------------------------------------------- embeddings


def test_embed_shapes_and_values(files):
    model = single_label_model()
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    e = tagger.embed(files["short"], tokens=True)
    assert e.embedding.shape == (192,) and e.window_embeddings.shape == (1, 192)
    assert e.tokens.shape == (1, 12, 29, 192)  # grid of 128 x 300 at strides 10/10
    x = features_of(model, load_audio(files["short"])).unsqueeze(0)
    with torch.no_grad():
        np.testing.assert_allclose(e.embedding, model.forward_features(x)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(e.tokens[0], model.token_grid(x)[0].numpy(), atol=1e-5)
    mean_pooled = single_label_model()
    mean_pooled.config = mean_pooled.config.replace(pool="mean")  # the from-scratch preset's pooling
    e = AudioTagger(mean_pooled, device="cpu", precision="fp32").embed(files["short"])
    with torch.no_grad():
        np.testing.assert_allclose(e.embedding, mean_pooled.forward_features(x)[0].numpy(), atol=1e-5)
    long = tagger.embed([files["long"], files["wav"]])
    assert [len(r.spans) for r in long] == [6, 1]
    assert long[0].window_embeddings.shape == (6, 192) and long[0].tokens is None
    np.testing.assert_allclose(long[0].embedding, long[0].window_embeddings.mean(axis=0), atol=1e-6)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_is_the_mean_of_its_members(files, checkpoints):
    paths = [files["long"], files["short"], files["flac"]]
    members = [checkpoints["single"], checkpoints["multi"]]  # 300 and 128 frames, softmax and sigmoid
    ensemble = AudioTagger(members, device="cpu", precision="fp32").predict(paths)
    alone = [AudioTagger(m, device="cpu", precision="fp32").predict(paths) for m in members]
    for i, p in enumerate(ensemble):
        mean = (alone[0][i].scores + alone[1][i].scores) / 2
        np.testing.assert_allclose(p.scores, mean, atol=1e-6)
        assert p.labels[0][0] == ["tone", "noise", "chirp"][int(np.argmax(mean))]
    assert len(ensemble[0].spans) == 6  # the first member's windows
    tl = AudioTagger(members, device="cpu", precision="fp32").timeline(files["long"], window=5.0, hop=5.0, method="windows")
    tl_alone = [AudioTagger(m, device="cpu", precision="fp32").timeline(files["long"], window=5.0, hop=5.0, method="windows")
                for m in members]  # fmt: skip
    np.testing.assert_allclose(tl.scores, (tl_alone[0].scores + tl_alone[1].scores) / 2, atol=1e-6)


def test_ensemble_members_need_the_same_labels(checkpoints):
    with pytest.raises(ConfigError, match="same number of labels"):
        AudioTagger([checkpoints["single"], tiny_ast(label_dim=5)], device="cpu")
    with pytest.raises(ConfigError, match="single checkpoint"):
        AudioTagger([checkpoints["single"], checkpoints["multi"]], device="cpu").embed(np.zeros(SR), SR)


# --------------------------------------------------------------------------- attention


def test_attention_rollout_matches_its_definition(files, tmp_path):
    model = single_label_model()
    x = torch.randn(2, 300, 128)
    with torch.no_grad():
        logits, grid = attention_grid(model, x, "rollout")
        _, maps = model.attention_maps(x)
        np.testing.assert_allclose(logits.numpy(), model(x).numpy(), atol=1e-5)
    joint = np.stack([np.eye(maps[0].shape[-1])] * 2)
    for a in maps:
        a = a.mean(1).numpy() + np.eye(a.shape[-1])
        joint = (a / a.sum(-1, keepdims=True)) @ joint
    expected = joint[:, :2, 2:].mean(1).reshape(2, 12, 29)
    np.testing.assert_allclose(grid.numpy(), expected, atol=1e-5)
    with torch.no_grad():
        _, last = attention_grid(model, x, "last")
    np.testing.assert_allclose(
        last.numpy(), maps[-1].mean(1)[:, :2, 2:].mean(1).reshape(2, 12, 29), atol=1e-6
    )

    spread = grid_to_frames(torch.ones(1, 12, 29), model)
    assert spread.shape == (1, 300, 128)
    assert torch.all(spread[0, :296, :126] == 1)  # the patches cover 296 frames x 126 bins
    assert torch.all(spread[0, 296:] == 0) and torch.all(spread[0, :, 126:] == 0)

    tagger = AudioTagger(model, device="cpu")
    att = tagger.attention(files["long"], start=2.0, method="rollout")
    assert att.map.shape == att.features.shape == (300, 128) and att.grid.shape == (12, 29)
    assert att.start == 2.0 and att.end == pytest.approx(2.0 + WINDOW_300 / SR)
    png = tagger.plot(files["short"], tmp_path / "plots" / "short.png", method="last")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_names_of_the_former_module_stay_importable():
    import ast_audio
    import ast_audio.infer as infer

    for name in ["AGGREGATES", "PRECISIONS", "Audio", "AttentionMap", "AudioTagger", "Embedding", "Event",
                 "Prediction", "Timeline", "Window", "attention_grid", "grid_to_frames", "merge_events",
                 "pick_device", "plot_attention", "window_spans"]:  # fmt: skip
        assert hasattr(infer, name), name
    for name in ["AudioTagger", "Embedding", "Event", "Prediction", "Timeline", "Window", "plot_attention"]:
        assert getattr(ast_audio, name) is getattr(infer, name)
    assert infer.AGGREGATES == ("max", "mean") and infer.PRECISIONS == ("auto", "fp32", "bf16", "int8")
