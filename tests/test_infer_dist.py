import csv
import json
import signal

import numpy as np
from conftest import ok, run_main, run_torchrun, start_cli, wait_for_file
from factories import SR, noise, write_audio, write_text_as_audio
from precision import BATCH_MATES


def audio_folder(root, count: int, seconds: float = 0.3):
    root.mkdir(parents=True)
    for i in range(count):
        write_audio(root / f"clip{i:03d}.wav", noise(seconds, seed=i), SR, subtype="PCM_16")
    return root


def csv_paths(out) -> list[str]:
    paths = []
    for shard in sorted(out.glob("predictions-*.csv")):
        with open(shard, newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["path", "rank", "label", "score"]
        paths += [row[0] for row in rows[1:] if row[1] == "1"]
    return paths


def test_torchrun_predict_and_embed_split_files_into_one_shard_per_process(tmp_path, checkpoints):
    clips = audio_folder(tmp_path / "in", 9)
    write_text_as_audio(clips / "broken.wav")
    out = tmp_path / "out"
    fp32 = ("--precision", "fp32")  # a file's scores in a rank's batch and alone: precision.BATCH_MATES
    res = run_torchrun("predict", clips, "--checkpoint", checkpoints["multi"], "--format", "csv", "-k", "2",
                       "--out", out, *fp32)  # fmt: skip
    assert res.returncode == 1 and "broken.wav: not a decodable audio file" in res.stderr  # reported, others done
    shards = sorted(p.name for p in out.glob("predictions-*"))
    assert shards == ["predictions-00000-of-00002.csv", "predictions-00001-of-00002.csv"]
    paths = csv_paths(out)
    assert sorted(paths) == sorted(str(p) for p in clips.glob("clip*.wav")) and len(set(paths)) == 9
    single = ok(run_main("predict", clips / "clip004.wav", "--checkpoint", checkpoints["multi"], "--format", "csv",
                        "-k", "2", *fp32))  # fmt: skip
    rows = [r for s in out.glob("predictions-*.csv") for r in csv.reader(open(s)) if r[0].endswith("clip004.wav")]
    want = list(csv.reader(single.stdout.splitlines()))[1:]  # the same rows as one process gives:
    assert [r[:3] for r in rows] == [r[:3] for r in want]  # path, rank, label; scores printed with 6 digits
    np.testing.assert_allclose([float(r[3]) for r in rows], [float(r[3]) for r in want], rtol=0,
                               atol=BATCH_MATES["fp32"] + 5e-7)  # fmt: skip

    emb = tmp_path / "emb"
    res = run_torchrun("embed", clips, "--checkpoint", checkpoints["multi"], "--out", emb, *fp32)
    assert res.returncode == 1
    assert run_main("embed", clips, "--checkpoint", checkpoints["multi"], "--out", tmp_path / "all.npz", *fp32).returncode == 1
    reference = np.load(tmp_path / "all.npz")
    want = dict(zip(reference["paths"].tolist(), reference["embeddings"], strict=True))
    got = {}
    for rank in range(2):
        rows = np.load(emb / f"embeddings-{rank:05d}-of-00002.npy")
        lines = (emb / f"embeddings-{rank:05d}-of-00002.jsonl").read_text().splitlines()
        assert rows.dtype == np.float32 and len(rows) == len(lines) > 0
        got.update({json.loads(line)["path"]: row for line, row in zip(lines, rows, strict=True)})
    assert sorted(got) == sorted(want)
    for path, row in got.items():
        np.testing.assert_allclose(row, want[path], atol=1e-5)


def test_a_killed_run_completes_on_rerun_without_duplicates(tmp_path, checkpoints):
    clips = audio_folder(tmp_path / "in", 120, seconds=1.0)
    out = tmp_path / "out"
    args = ("predict", clips, "--checkpoint", checkpoints["single"], "--format", "json", "--out", out, "-q")
    proc = start_cli(*args, OMP_NUM_THREADS=1)
    wait_for_file(out / ".00000-of-00001.progress.json", proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shard = out / "predictions-00000-of-00001.jsonl"
    written = shard.read_text().splitlines()
    assert 0 < len(written) < 120  # killed mid-run
    with open(shard, "a") as fh:  # and as if killed in the middle of writing a group
        fh.write('{"path": "' + str(clips / "clip119.wav") + '", "dur')
    res = ok(run_main(*args))
    assert f"{len(written)} from an earlier run" in res.stdout
    paths = [json.loads(line)["path"] for line in shard.read_text().splitlines()]
    assert sorted(paths) == sorted(str(p) for p in clips.glob("*.wav"))  # none missing, none twice
    assert paths[: len(written)] == [json.loads(line)["path"] for line in written]
    again = ok(run_main(*args))
    assert "0 new files, 120 from an earlier run" in again.stdout and len(shard.read_text().splitlines()) == 120
    other = ok(run_main(*args, RANK=1, WORLD_SIZE=2))  # as one of two processes: the one-process shard counts
    assert "0 new files, 0 from an earlier run" in other.stdout


def test_embed_rerun_drops_an_uncommitted_tail(tmp_path, checkpoints):
    clips = audio_folder(tmp_path / "in", 20)
    out = tmp_path / "emb"
    args = ("embed", clips, "--checkpoint", checkpoints["single"], "--out", out, "-q", "--precision", "fp32")  # compared at 1e-6
    ok(run_main(*args))
    npy, listing = out / "embeddings-00000-of-00001.npy", out / "embeddings-00000-of-00001.jsonl"
    first = np.load(npy)
    progress = json.loads((out / ".00000-of-00001.progress.json").read_text())
    progress["sizes"] = [128 + 16 * first.shape[1] * 4, len("".join(listing.read_text().splitlines(True)[:16]))]
    progress["rows"] = 16  # as if killed after the first group of 16 was committed
    (out / ".00000-of-00001.progress.json").write_text(json.dumps(progress))
    res = ok(run_main(*args))
    assert "16 files from an earlier run" in res.stdout
    again = np.load(npy)
    lines = [json.loads(line)["path"] for line in listing.read_text().splitlines()]
    assert again.shape == first.shape and sorted(lines) == sorted(str(p) for p in clips.glob("*.wav"))
    np.testing.assert_allclose(again, first, atol=1e-6)
