"""Datafiles and label CSVs in the original layout, checked up front."""

import json

import numpy as np
import pytest
from factories import write_audio

from ast_audio.data import balanced_weights, read_datafile, read_weights, weight_file_for, write_weights
from ast_audio.errors import DataError

LABELS = "index,mid,display_name\n0,/m/dog,\"Dog\"\n1,/m/cat,\"Cat, domestic\"\n2,/m/bird,\"Bird\"\n"


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "labels.csv").write_text(LABELS)
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a", "b", "c", "d"):
        write_audio(audio / f"{name}.wav", np.zeros(1600, dtype=np.float32), 16000)
    return tmp_path


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_reads_entries_with_relative_paths_beside_the_datafile(dataset):
    path = write_json(dataset / "train.json", {"data": [
        {"wav": "audio/a.wav", "labels": "/m/dog"},
        {"wav": str(dataset / "audio" / "b.wav"), "labels": "/m/cat,/m/dog"},
    ]})  # fmt: skip
    df = read_datafile(path, dataset / "labels.csv")
    assert [e.wav for e in df.entries] == [dataset / "audio" / "a.wav", dataset / "audio" / "b.wav"]
    assert [e.labels for e in df.entries] == [(0,), (0, 1)]
    np.testing.assert_array_equal(df.targets(), [[1, 0, 0], [1, 1, 0]])
    assert df.labels.names[1] == "Cat, domestic"
    assert [e.group for e in df.entries] == [None, None]


def test_an_entry_may_name_its_group_and_keeps_it_when_matched_by_name(dataset):
    from ast_audio.data.datafiles import match_datafile, write_datafile

    path = write_datafile(dataset / "g.json", [(dataset / "audio" / "a.wav", ["/m/dog"], "session 1"),
                                               (dataset / "audio" / "b.wav", ["/m/cat"])])  # fmt: skip
    assert json.loads(path.read_text())["data"][1] == {"wav": str(dataset / "audio" / "b.wav"), "labels": "/m/cat"}
    df = read_datafile(path, dataset / "labels.csv")
    assert [e.group for e in df.entries] == ["session 1", None]
    matched = match_datafile(df, ["Cat, domestic", "Dog", "Bird"], None, 3)
    assert [(e.labels, e.group) for e in matched.entries] == [((1,), "session 1"), ((0,), None)]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"data": [', r"not valid JSON \(line 1, column 11"),
        ('[{"wav": "audio/a.wav"}]', "expected a JSON object"),
        ('{"data": [{"wav": "audio/a.wav", "labels": "/m/dog"}, {"wav": "audio/b.wav"}]}', "entry 1: missing or empty 'labels'"),
        ('{"data": [{"wav": "audio/a.wav", "labels": "/m/cow"}]}', r"entry 0 \(audio/a.wav\): label '/m/cow' is not in the label CSV"),
        ('{"data": [{"wav": "audio/zz.wav", "labels": "/m/dog"}]}', "entry 0: audio file not found: .*zz.wav"),
        ('{"data": []}', "no usable entries"),
        ('{"data": [{"wav": "audio/a.wav", "labels": "/m/dog", "group": 3}]}', r"entry 0 \(audio/a.wav\): group must be a string, got 3"),
    ],
)
def test_every_problem_names_the_file_and_the_entry(dataset, content, message):
    path = dataset / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_datafile(path, dataset / "labels.csv")
    assert str(err.value).startswith(str(path))


def test_skip_bad_reports_instead_of_failing(dataset):
    path = write_json(dataset / "train.json", {"data": [
        {"wav": "audio/a.wav", "labels": "/m/dog"},
        {"wav": "audio/missing.wav", "labels": "/m/dog"},
        {"wav": "audio/c.wav", "labels": "/m/unknown"},
        {"wav": "audio/d.wav", "labels": "/m/bird"},
    ]})  # fmt: skip
    df = read_datafile(path, dataset / "labels.csv", skip_bad=True)
    assert [e.wav.name for e in df.entries] == ["a.wav", "d.wav"]
    assert len(df.skipped) == 2 and "entry 1" in df.skipped[0] and "entry 2" in df.skipped[1]


def test_balanced_weights_follow_the_original_formula(dataset):
    path = write_json(dataset / "train.json", {"data": [
        {"wav": "audio/a.wav", "labels": "/m/dog"},
        {"wav": "audio/b.wav", "labels": "/m/dog,/m/cat"},
        {"wav": "audio/c.wav", "labels": "/m/dog"},
        {"wav": "audio/d.wav", "labels": "/m/bird"},
    ]})  # fmt: skip
    df = read_datafile(path, dataset / "labels.csv")
    w_dog, w_cat, w_bird = 1000 / 3.01, 1000 / 1.01, 1000 / 1.01
    np.testing.assert_allclose(balanced_weights(df), [w_dog, w_dog + w_cat, w_dog, w_bird])
    out = write_weights(df)
    assert out == weight_file_for(path) == dataset / "train_weight.csv"
    np.testing.assert_allclose(read_weights(out, 4), balanced_weights(df))
    with pytest.raises(Exception, match="expected 5 finite non-negative weights"):
        read_weights(out, 5)


def test_label_csv_problems_are_named(dataset):
    (dataset / "broken.csv").write_text("index,name\n0,dog\n")
    path = write_json(dataset / "train.json", {"data": [{"wav": "audio/a.wav", "labels": "/m/dog"}]})
    with pytest.raises(Exception, match=r"broken.csv: label CSV needs a header 'index,mid,display_name'"):
        read_datafile(path, dataset / "broken.csv")
