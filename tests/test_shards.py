import json
import re
import tarfile

import numpy as np
import pytest
import torch
from conftest import ok, run_main, run_torchrun
from factories import as_flags, toy_train_settings, write_audio, write_text_as_audio, write_toy_dataset

from ast_audio.audio.io import load_audio
from ast_audio.base.distributed import Dist
from ast_audio.base.runtime import pick_device
from ast_audio.data import balanced_weights, read_datafile
from ast_audio.data.dataset import AudioDataset, EpochSampler
from ast_audio.data.shards import ShardStream, read_shards, write_shards
from ast_audio.errors import DataError
from ast_audio.features import InputContract
from ast_audio.features.pipeline import NONE
from ast_audio.train import Run, TrainConfig


def shard_toy(tmp_path, per_class=6, max_size="40KB", **kwargs):
    root = write_toy_dataset(tmp_path / "toy", per_class, 2)
    out = tmp_path / "shards"
    write_shards(root / "train.json", root / "labels.csv", out, max_size=max_size, **kwargs)
    return root, out


def test_shard_cli_writes_bytes_labels_index_and_reports_bad_files(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", 4, 1)
    doc = json.loads((root / "train.json").read_text())
    bad = write_text_as_audio(tmp_path / "bad.wav")
    doc["data"] += [{"wav": str(bad), "labels": "/m/low"}, {"wav": str(tmp_path / "gone.wav"), "labels": "/m/low"},
                    {"wav": doc["data"][0]["wav"], "labels": "/m/nope"}]  # fmt: skip
    (root / "train.json").write_text(json.dumps(doc))
    out = tmp_path / "shards"
    res = ok(run_main("shard", root / "train.json", "--label-csv", root / "labels.csv", "--out", out,
                     "--max-size", "70KB"))  # fmt: skip
    assert "12 clips in" in res.stdout and "bad files: 3" in res.stdout
    report = (out / "bad_files.txt").read_text().splitlines()
    assert any(line.startswith(f"{bad}: not a decodable") for line in report)
    assert any("gone.wav" in line for line in report) and any("/m/nope" in line for line in report)
    index = json.loads((out / "index.json").read_text())
    assert len(index["shards"]) > 1 and all(s["bytes"] <= 70_000 for s in index["shards"])
    assert index["samples"] == 12 == sum(s["samples"] for s in index["shards"])
    mids = [e["labels"] for e in doc["data"][:12]]
    assert index["label_counts"] == {mid: mids.count(mid) for mid in set(mids)}
    seen = {}
    for shard in index["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".")[0] for name in members}
        assert len(keys) == shard["samples"]
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            assert members[f"{key}.wav"] == open(meta["wav"], "rb").read()  # the file's own bytes
            seen[meta["index"]] = meta["labels"]
    assert seen == {i: doc["data"][i]["labels"] for i in range(12)}
    assert not list(out.glob(".*tmp"))
    res = run_main("shard", root / "missing.json", "--label-csv", root / "labels.csv", "--out", out)
    assert res.returncode == 2 and "missing.json: datafile not found" in res.stderr and "Traceback" not in res.stderr


def test_flac_shards_hold_16khz_audio(tmp_path):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/a,A\n")
    x = (0.3 * np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100)).astype("float32")
    wav = write_audio(root / "a.wav", np.stack([x, x], 1), 44100)
    (root / "d.json").write_text(json.dumps({"data": [{"wav": str(wav), "labels": "/m/a"}]}))
    write_shards(root / "d.json", root / "labels.csv", tmp_path / "s", flac=True)
    shards = read_shards(tmp_path / "s", root / "labels.csv")
    stream = ShardStream(shards, InputContract(target_length=100))
    (draw,) = list(stream._draws([0], 0))
    assert draw[2].endswith(".tar:000000000") and draw[3][:4] == b"fLaC"
    want = load_audio(wav, 16000)
    from ast_audio.data.shards import decode

    got, rate = decode(draw[3], draw[2], stream.contract)
    assert rate == 16000 and got.shape == want.shape and float((got - want).abs().max()) < 1e-4  # 16-bit


def test_stream_items_are_the_datasets_items(tmp_path):
    root, out = shard_toy(tmp_path, per_class=2)
    labels = root / "labels.csv"
    df = read_datafile(root / "train.json", labels)
    contract = InputContract(target_length=120, mean=-5.0, std=3.0)
    stream = ShardStream(read_shards(out, labels), contract, NONE)
    files = AudioDataset(df, contract, NONE)
    draws = list(stream._draws(range(len(stream.shards.shards)), 0))
    assert sorted(d[0] for d in draws) == list(range(len(df)))
    for draw in draws:
        got = stream.model_input(stream.collate([stream._item(draw, [], 0)]), "cpu")
        want = files.model_input(files.collate([files[draw[0]]]), "cpu")
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_a_sample_that_cannot_be_decoded_is_skipped_or_named(tmp_path):
    root, out = shard_toy(tmp_path, per_class=2)
    shards = read_shards(out, root / "labels.csv")
    good = next(ShardStream(shards, InputContract(target_length=100))._draws([0], 0))
    broken = (good[0], 0, "shard-000000.tar:broken", b"not audio at all", good[4])
    skipping = ShardStream(shards, InputContract(target_length=100), skip_bad=True)
    batch = skipping.collate([skipping._item(broken, [], 0), skipping._item(good, [], 0)])
    assert batch["target"].shape[0] == 1
    assert [path for path, _ in batch["skipped"]] == ["shard-000000.tar:broken"]
    strict = ShardStream(shards, InputContract(target_length=100))
    with pytest.raises(DataError, match="shard-000000.tar:broken"):
        strict.model_input(strict.collate([strict._item(broken, [], 0), strict._item(good, [], 0)]), "cpu")


def test_specs_patterns_lists_and_errors(tmp_path):
    root, out = shard_toy(tmp_path)
    labels = root / "labels.csv"
    n = len(read_shards(out, labels).shards)
    assert n >= 3
    pattern = read_shards(f"{out}/shard-{{000000..{n - 2:06d}}}.tar", labels)
    assert [s.path.name for s in pattern.shards] == [f"shard-{i:06d}.tar" for i in range(n - 1)]
    listed = read_shards(f"{out}/shard-000000.tar,{out}/shard-000002.tar", labels)
    assert len(listed) == listed.shards[0].samples + listed.shards[1].samples
    with pytest.raises(DataError, match="shard-000099.tar: index.json does not list"):
        read_shards(f"{out}/shard-000099.tar", labels)
    (out / "shard-000001.tar").unlink()
    with pytest.raises(DataError, match="shard-000001.tar: shard not found"):
        read_shards(out, labels)
    other = tmp_path / "other.csv"
    other.write_text("index,mid,display_name\n0,/m/high,high\n")
    with pytest.raises(DataError, match="shard-000000.tar: label ./m/low. is not in the label CSV"):
        read_shards(f"{out}/shard-000000.tar,{out}/shard-000002.tar", other)
    stream = ShardStream(listed, InputContract(target_length=100), world=2)
    with pytest.raises(DataError, match="2 shards cannot feed 4 readers"):
        stream.loader(4, num_workers=2)  # before any worker starts


def epoch_draws(stream: ShardStream, epoch: int, slots: int) -> list[list[int]]:
    """The clip indices each slot yields in ``epoch`` (the real reading path, without decoding)."""
    assigned, quota = stream.plan(epoch, slots)
    return [[d[0] for d in stream._draws(ids, epoch)][:quota] for ids in assigned]


def test_shards_split_across_slots_without_repeats(tmp_path):
    root, out = shard_toy(tmp_path, per_class=7)
    shards = read_shards(out, root / "labels.csv")
    single = ShardStream(shards, InputContract(target_length=100))
    for slots in (1, 2, 3):
        draws = epoch_draws(single, 1, slots)
        assert sorted(sum(draws, [])) == list(range(21))  # one process: every clip once
    ddp = ShardStream(shards, InputContract(target_length=100), world=2)
    for epoch in (1, 2):
        draws = epoch_draws(ddp, epoch, 4)
        flat = sum(draws, [])
        assert len(set(flat)) == len(flat)  # nothing read twice
        assert len({len(d) for d in draws}) == 1 and len(flat) >= 21 - 4 * max(s.samples for s in shards.shards)
    assert ddp.plan(1, 4)[0] != ddp.plan(2, 4)[0]  # another deal each epoch


def test_balanced_streaming_matches_balanced_sampling_on_a_skewed_set(tmp_path):
    root = tmp_path / "skew"
    (root / "audio").mkdir(parents=True)
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n2,/m/c,C\n")
    data = []
    for mid, count in (("/m/a", 60), ("/m/b", 8), ("/m/c", 2)):
        for i in range(count):
            wav = write_audio(root / "audio" / f"{mid[-1]}{i}.wav", np.zeros(160, "float32"), 16000)
            data.append({"wav": str(wav), "labels": mid if i % 4 or mid != "/m/a" else f"{mid},/m/b"})
    (root / "train.json").write_text(json.dumps({"data": data}))
    write_shards(root / "train.json", root / "labels.csv", tmp_path / "s", max_size="20KB")
    shards = read_shards(tmp_path / "s", root / "labels.csv")
    df = read_datafile(root / "train.json", root / "labels.csv")
    targets = df.targets()
    stream = ShardStream(shards, InputContract(target_length=100), balanced=True)
    sampler = EpochSampler(len(df), 0, weights=balanced_weights(df))
    epochs, streamed, sampled = 300, np.zeros(3), np.zeros(3)
    for epoch in range(epochs):
        draws = epoch_draws(stream, epoch, 1)[0]
        assert abs(len(draws) - len(df)) <= len(shards.shards)  # N draws to within one per shard
        streamed += targets[draws].sum(0)
        sampler.set_epoch(epoch)
        sampled += targets[[d.index for d in sampler]].sum(0)
    want = (balanced_weights(df)[:, None] * targets).sum(0) / balanced_weights(df).sum() * len(df)  # expected
    np.testing.assert_allclose(streamed / epochs, want, rtol=0.03)
    np.testing.assert_allclose(sampled / epochs, want, rtol=0.1)  # the files' sampler: same expectation
    assert targets.sum(0)[2] / len(df) < 0.03 and streamed[2] / streamed.sum() > 0.2  # the rare class is lifted


def test_training_from_shards_sees_the_files_labels_and_counts(tmp_path):
    root, out = shard_toy(tmp_path, per_class=4)
    counts = {}
    for name, data in (("files", root / "train.json"), ("shards", out)):
        settings = toy_train_settings(root, tmp_path / name, data_train=str(data), n_epochs=1, batch_size=4,
                                      freqm=10, timem=10, num_workers=2)  # fmt: skip
        cfg = TrainConfig(**settings)
        run = Run.build(cfg, pick_device("cpu"), Dist(), tmp_path / name)
        run.sampler.set_epoch(1)
        targets = [run.train_set.model_input(b, "cpu")[1] for b in run.loader]
        counts[name] = (sum(len(t) for t in targets), torch.cat(targets).sum(0).tolist())
    assert counts["shards"] == counts["files"] == (12, [4.0, 4.0, 4.0])
    res = ok(run_main("train", *as_flags(toy_train_settings(root, tmp_path / "exp", data_train=str(out),
                                                           n_epochs=2, mixup=0.5, bal=True))))  # fmt: skip
    assert len((tmp_path / "exp" / "result.csv").read_text().splitlines()) == 2, res.stderr


def test_two_processes_read_disjoint_shards(tmp_path):
    root, out = shard_toy(tmp_path, per_class=4, max_size="20KB")
    n = len(read_shards(out, root / "labels.csv").shards)
    settings = toy_train_settings(root, tmp_path / "exp", data_train=str(out), n_epochs=2, batch_size=4)
    res = run_torchrun("-v", "train", *as_flags(settings), "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    read = re.findall(r"epoch (\d), rank (\d), worker 0 reads shards (\S+) \((\d+) draws\)", res.stderr)
    for epoch in ("1", "2"):
        mine = {rank: names.split(",") for e, rank, names, _ in read if e == epoch}
        assert set(mine) == {"0", "1"} and not set(mine["0"]) & set(mine["1"])
        assert len(mine["0"]) + len(mine["1"]) == n
        assert len({q for e, _, _, q in read if e == epoch}) == 1  # the same number of steps on both
    assert len((tmp_path / "exp" / "result.csv").read_text().splitlines()) == 2


def test_the_full_audioset_schedule_counts_clips_in_the_shard_index(tmp_path):
    from ast_audio.train.config import FULL_AUDIOSET, dataset_defaults

    (tmp_path / "index.json").write_text(json.dumps({"format": "ast-audio-shards", "samples": FULL_AUDIOSET + 1}))
    assert dataset_defaults("audioset", str(tmp_path))["lrscheduler_start"] == 2  # the full set's schedule
    (tmp_path / "index.json").write_text(json.dumps({"format": "ast-audio-shards", "samples": 20_000}))
    assert dataset_defaults("audioset", str(tmp_path)) == dataset_defaults("audioset")
