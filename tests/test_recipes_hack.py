"""The seed's own recipe (the "hack" fork's egs/hack): a miniature hackathon folder in the
fork's layout, prepared as ``prep_hack.py`` did, trained as ``run.sh``, the final step of
``prep_test.py``, and the submission in ``sample_submission.csv``'s format."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ok, run_main
from factories import tone, write_text_as_audio, write_truncated_mp3
from layouts import TINY, report, write_table
from safetensors.torch import load_file

from ast_audio.audio.io import load_audio
from ast_audio.checkpoints import load_model
from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset
from ast_audio.data.labels import read_label_csv
from ast_audio.features import InputContract, file_to_input, waveform_to_input
from ast_audio.features.pipeline import file_input
from ast_audio.recipes import config_path, read_config
from ast_audio.recipes.hack import tail_split


def native_input(path, cfg: InputContract) -> torch.Tensor:
    """The fork's model input of a file, made here independently of the project's pipeline:
    ``waveform_to_input`` at the file's own rate."""
    return waveform_to_input(load_audio(path, sample_rate=None), replace(cfg, sample_rate=sf.info(str(path)).samplerate))

EMOTIONS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
# (format, sample rate) in turn: the hackathon's files are mp3 and wav at their own rates
KINDS = [("mp3", 44100), ("wav", 16000), ("mp3", 48000), ("wav", 22050)]


def write_clip(path, x, rate):
    if path.suffix == ".mp3":
        sf.write(path, x, rate, format="MP3")
    else:
        sf.write(path, x, rate, subtype="PCM_16")


def write_hack(root, seed=0) -> dict:
    """``train.csv`` (``filename,emotion``), ``test.csv`` (``filename``), ``TrainAudioFiles/``,
    ``TestAudioFiles/``: seven emotions (neutral the most frequent, as in the real data), mp3
    and wav at 16-48 kHz, numeric names; planted in training an empty file (the fork's one
    corrupt file, ``38543.wav``), a truncated mp3 and a text file named ``.wav``; in the test
    list an empty file, a text file named ``.wav`` and a truncated mp3 that decodes partly."""
    rng = np.random.default_rng(seed)
    train_dir, test_dir = root / "TrainAudioFiles", root / "TestAudioFiles"
    train_dir.mkdir(parents=True)
    test_dir.mkdir()
    counts = {e: 5 if e == "neutral" else 3 for e in EMOTIONS}
    order = [e for k in range(5) for e in EMOTIONS if k < counts[e]]  # classes interleaved, as a real CSV
    rows, bad = [], {}
    for n, emotion in enumerate(order):
        fmt, rate = KINDS[n % len(KINDS)]
        name = f"{int(rng.integers(1000, 50000))}{n:02d}.{fmt}"
        write_clip(train_dir / name, tone(250 * 1.4 ** EMOTIONS.index(emotion), rate, rng=rng), rate)
        rows.append((name, emotion))
    (train_dir / "38543.wav").write_bytes(b"")
    write_truncated_mp3(train_dir / "4101.mp3", tone(600, 44100, 2.0, rng=rng), 44100)
    write_text_as_audio(train_dir / "777.wav")
    planted = [(3, "38543.wav", "joy", "empty"), (12, "4101.mp3", "fear", "truncated"), (25, "777.wav", "anger", "text")]
    for at, name, emotion, kind in planted:
        rows.insert(at, (name, emotion))
        bad[str((train_dir / name).resolve())] = kind
    write_table(root / "train.csv", ["filename", "emotion"], rows)

    tests = []
    for i, c in enumerate([4, 0, 6, 2, 3, 1]):
        fmt, rate = KINDS[(i + 1) % len(KINDS)]
        name = f"{9000 + i}.{fmt}"
        write_clip(test_dir / name, tone(250 * 1.4**c, rate, rng=rng), rate)
        tests.append(name)
    (test_dir / "5807.mp3").write_bytes(b"")
    write_text_as_audio(test_dir / "43982.wav")
    write_truncated_mp3(test_dir / "4079.mp3", tone(250 * 1.4**5, 48000, 2.0, rng=rng), 48000)
    tests[1:1] = ["5807.mp3"]
    tests[4:4] = ["43982.wav", "4079.mp3"]
    unreadable = {str((test_dir / "5807.mp3").resolve()): "empty", str((test_dir / "43982.wav").resolve()): "text"}
    (root / "test.csv").write_text("filename\n" + "".join(t + "\n" for t in tests))
    return {"rows": rows, "bad": bad, "tests": tests, "unreadable": unreadable, "truncated": "4079.mp3"}


@pytest.fixture(scope="module")
def hack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "hack"
    return root, write_hack(root)


def usable(root, info) -> list[tuple[str, str]]:
    """``[(absolute path, emotion), ...]`` of the usable training rows, in file order."""
    paths = [(str((root / "TrainAudioFiles" / name).resolve()), e) for name, e in info["rows"]]
    return [(p, e) for p, e in paths if p not in info["bad"]]


def test_shipped_config_is_the_forks_run_sh():
    train, options = read_config(config_path("hack"))
    fork = dict(imagenet_pretrain=True, audioset_pretrain=True, lr=1e-5, n_epochs=10, batch_size=30, freqm=24,
                timem=96, mixup=0.0, bal=False, fstride=10, tstride=10, model_size="base384", audio_length=512,
                dataset_mean=-6.6268077, dataset_std=5.358466, noise=False, loss="CE", metrics="acc", warmup=False,
                lrscheduler_start=5, lrscheduler_step=1, lrscheduler_decay=0.85)  # fmt: skip
    from ast_audio.train.config import resolve_train_config

    resolved = resolve_train_config(train)  # the config names run.sh's --dataset esc50 as its preset
    assert {k: getattr(resolved, k) for k in fork} == fork
    assert options["valid_fraction"] == 0.2 and options["stratify"] is False and options["final"] is False
    assert train["dataset"] == "esc50" and train["resample"] is True and options["lr_without_audioset"] == 1e-4


def test_tail_split_is_the_forks_four_fifths():
    assert [tail_split(n, 0.2) for n in range(300)] == [n * 4 // 5 for n in range(300)]
    assert [tail_split(n, 0.1) for n in range(300)] == [n * 9 // 10 for n in range(300)]
    assert [tail_split(n, 0.35) for n in range(300)] == [n * 13 // 20 for n in range(300)]


def test_prepare_is_prep_hack_with_bad_files_found_by_decoding(hack, tmp_path):
    root, info = hack
    out = tmp_path / "prepared"
    result = ok(run_main("prepare", "hack", "--root", root, "--out", out))
    assert "bad files: 5" in result.stdout  # three training files, two test files

    reasons = report(out)
    assert set(reasons) == set(info["bad"]) | set(info["unreadable"])
    kinds = {**info["bad"], **info["unreadable"]}
    for path, reason in reasons.items():
        expected = {"empty": "empty file", "truncated": "truncated file", "text": "not a decodable audio file"}
        assert reason.startswith(expected[kinds[path]]), (path, reason)

    labels = read_label_csv(out / "class_labels_indices.csv")
    assert labels.names == EMOTIONS  # the fork's table, in its order
    good = usable(root, info)
    as_rows = lambda name: [(str(e.wav), labels.names[e.labels[0]]) for e in read_datafile(out / name, labels).entries]  # noqa: E731
    n = len(good) * 4 // 5
    assert as_rows("hack_full_train_data.json") == good
    assert as_rows("hack_train_data.json") == good[:n] and as_rows("hack_eval_data.json") == good[n:]
    assert {p.rsplit(".", 1)[1] for p, _ in good[:n]} == {"mp3", "wav"}

    tests = json.loads((out / "test_list.json").read_text())["data"]
    assert [t["filename"] for t in tests] == info["tests"]
    assert {t["wav"] for t in tests if t["error"]} == set(info["unreadable"])
    noted = [t for t in tests if t["note"]]
    assert [t["filename"] for t in noted] == [info["truncated"]] and "predicted from the part" in noted[0]["note"]
    summary = json.loads((out / "prepared.json").read_text())["summary"]
    assert summary["majority_label"] == "neutral" and summary["split"] == "tail"
    assert summary["clips"] == {"train": n, "valid": len(good) - n, "full": len(good)}

    out2 = tmp_path / "stratified"
    ok(run_main("prepare", "hack", "--root", root, "--out", out2, "--stratify", "--valid-fraction", "0.3"))
    labels2 = read_label_csv(out2 / "class_labels_indices.csv")
    held = [labels2.names[e.labels[0]] for e in read_datafile(out2 / "hack_eval_data.json", labels2).entries]
    assert sorted(held) == sorted([e for e in EMOTIONS if e != "neutral"] + ["neutral", "neutral"])  # round(n * 0.3)


def test_native_rate_items_are_the_forks_features(hack, tmp_path):
    root, info = hack
    out = tmp_path / "prepared"
    ok(run_main("prepare", "hack", "--root", root, "--out", out))
    labels = read_label_csv(out / "class_labels_indices.csv")
    df = read_datafile(out / "hack_train_data.json", labels)
    conf = InputContract(target_length=100, mean=-6.6268077, std=5.358466)
    native, resampled = AudioDataset(df, conf.replace(resample=False)), AudioDataset(df, conf)
    rates = set()
    for i in range(4):
        wav = df.entries[i].wav
        rate = sf.info(str(wav)).samplerate
        rates.add(rate)
        (x,), _ = native.model_input(native.collate([native[i]]), "cpu")
        (x16,), _ = resampled.model_input(resampled.collate([resampled[i]]), "cpu")
        expected = native_input(wav, conf)
        torch.testing.assert_close(x, expected.float(), rtol=0, atol=1e-5)
        assert x.shape == (100, 128)
        assert torch.equal(native[i]["target"], resampled[i]["target"])
        torch.testing.assert_close(file_input(wav, conf.replace(resample=False)), expected, rtol=0, atol=1e-5)
        if rate != 16000:
            assert (x - x16).abs().max() > 0.1  # 16 kHz features are another thing
    assert rates == {44100, 16000, 48000, 22050}


def expected_submission(model_path, entries, to_input, fallback) -> tuple[bytes, dict[str, float]]:
    """The submission predicted here, independently of the recipe, and each predicted file's top-2 margin."""
    model = load_model(model_path, device="cpu")
    fcfg = InputContract(num_mel_bins=model.config.input_fdim, target_length=model.config.input_tdim,
                         mean=model.info.dataset_mean, std=model.info.dataset_std)  # fmt: skip
    readable = [e for e in entries if not e["error"]]
    with torch.inference_mode():
        logits = model(torch.stack([to_input(e["wav"], fcfg) for e in readable]))
    top2 = logits.topk(2, dim=1).values
    labels = {e["filename"]: model.info.labels[k] for e, k in zip(readable, logits.argmax(1).tolist(), strict=True)}
    margins = {e["filename"]: float(m) for e, m in zip(readable, top2[:, 0] - top2[:, 1], strict=True)}
    lines = ["filename,emotion"] + [f"{e['filename']},{labels.get(e['filename'], fallback)}" for e in entries]
    return ("\n".join(lines) + "\n").encode(), margins


def check_submission(folder, test_list, info, model_path, to_input, other_input):
    """``submission.csv`` byte for byte: what the model predicts from ``to_input``'s features
    (and not from ``other_input``'s, which would give another submission: the check can fail)."""
    got = (folder / "submission.csv").read_bytes()
    entries = json.loads(test_list.read_text())["data"]
    expected, margins = expected_submission(model_path, entries, to_input, "neutral")
    assert expected_submission(model_path, entries, other_input, "neutral")[0] != expected
    if got != expected:  # only a near-tie may go either way (another thread count, other rounding)
        for g, e in zip(got.decode().splitlines(), expected.decode().splitlines(), strict=True):
            assert g == e or margins[g.split(",")[0]] < 1e-4, (g, e)
    lines = got.decode().split("\n")
    assert lines[0] == "filename,emotion" and lines[-1] == "" and b"\r" not in got
    rows = [line.split(",") for line in lines[1:-1]]
    assert [r[0] for r in rows] == info["tests"] and all(len(r) == 2 and r[1] in EMOTIONS for r in rows)
    assert all(dict(rows)[name] == "neutral" for name in ("5807.mp3", "43982.wav"))  # unreadable: the majority

    with open(folder / "submission_notes.csv", newline="") as fh:
        notes = list(csv.reader(fh))
    assert notes[0] == ["filename", "emotion", "note"]
    assert [n[0] for n in notes[1:]] == ["5807.mp3", "43982.wav", "4079.mp3"]
    assert notes[1][1:] == ["neutral", "unreadable (empty file (0 bytes)): the most frequent training label"]
    assert notes[2][2].startswith("unreadable (not a decodable audio file") and notes[2][1] == "neutral"
    assert notes[3][1] == dict(rows)["4079.mp3"] and notes[3][2].startswith("truncated file")


# A barely trained model (lr 1e-7 from random weights) keeps input-dependent predictions, so
# the submission shows which features it was computed from; trained on so few clips, the
# model would answer the prior's label everywhere. The lr comes through the recipe's own
# rule (run.sh: another lr without AudioSet weights).
BARELY = [*TINY, "batch_size=8", "lr_without_audioset=1e-7"]


def test_recipe_trains_as_run_sh_and_writes_the_submission(hack, tmp_path):
    root, info = hack
    exp = tmp_path / "exp"
    ok(run_main("recipe", "hack", "--root", root, "--exp-dir", exp, "--set", *BARELY))

    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert cfg["data_train"].endswith("hack_train_data.json") and cfg["data_val"].endswith("hack_eval_data.json")
    assert (cfg["n_class"], cfg["loss"], cfg["metrics"], cfg["freqm"], cfg["timem"]) == (7, "CE", "acc", 24, 96)
    assert (cfg["dataset_mean"], cfg["dataset_std"], cfg["lr"]) == (-6.6268077, 5.358466, 1e-7)  # ESC-50's
    assert not (exp / "final").exists() and "own sample rate" not in (exp / "log.txt").read_text()
    result = json.loads((exp / "recipe_result.json").read_text())
    assert (result["mode"], result["sample_rate"], result["unreadable"], result["truncated"]) == ("validation", 16000, 2, 1)
    check_submission(exp, exp / "data" / "test_list.json", info, exp / "models" / "best_audio_model.safetensors", file_to_input,
                     native_input)


def test_final_step_trains_on_every_usable_row_at_native_rates(hack, tmp_path):
    root, info = hack
    exp = tmp_path / "exp"
    ok(run_main("recipe", "hack", "--root", root, "--exp-dir", exp,
           "--set", *BARELY, "n_epochs=2", "save_model=true", "final=true", "resample=false"))  # fmt: skip

    final = exp / "final"
    cfg = json.loads((final / "config.json").read_text())["config"]
    assert cfg["data_train"].endswith("hack_full_train_data.json") and cfg["n_epochs"] == 2
    assert len(json.loads(open(cfg["data_train"]).read())["data"]) == len(usable(root, info))
    assert "hack_full_train_data.json: features at each file's own sample rate" in (final / "log.txt").read_text()
    # the model it predicts with is the one after the last epoch, exactly
    last, used = load_file(final / "models" / "audio_model.2.safetensors"), load_file(final / "models" / "audio_model_wa.safetensors")
    assert last.keys() == used.keys() and all(torch.equal(last[k], used[k]) for k in last)
    assert not all(torch.equal(last[k], load_file(final / "models" / "audio_model.1.safetensors")[k]) for k in last)
    result = json.loads((exp / "recipe_result.json").read_text())
    assert (result["mode"], result["sample_rate"], result["deliverable"]) == ("final", "native", str(final / "submission.csv"))
    assert not (exp / "submission.csv").exists()
    check_submission(final, exp / "data" / "test_list.json", info, final / "models" / "audio_model_wa.safetensors", native_input,
                     file_to_input)


def test_bad_input_is_one_line(hack, tmp_path):
    root, _ = hack
    out = run_main("prepare", "hack", "--root", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "dataset folder not found" in out.stderr
    out = run_main("prepare", "hack", "--root", root, "--out", tmp_path / "out", "--valid-fraction", "1.5")
    assert out.returncode == 2 and "valid_fraction must be between 0 and 1" in out.stderr
    out = run_main("recipe", "hack", "--root", root, "--exp-dir", tmp_path / "exp", "--set", "final=maybe")
    assert out.returncode == 2 and out.stderr.strip() == "ast-audio: error: --set final=maybe: expected true or false"
