"""Labelled clips from a folder of class folders, a CSV or a datafile JSON (``data.labelled``),
matched to a label table by mid, then display name."""

from __future__ import annotations

import json

import pytest
from factories import SR, noise, write_audio

from ast_audio.data.labelled import data_kind, datafile_from, labelled_files
from ast_audio.data.labels import LabelTable
from ast_audio.errors import DataError

TABLE = LabelTable(mids=["/m/dog", "/m/cat", "/m/bird"], names=["dog", "cat", "bird"])


def clip(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_audio(path, noise(0.2, 0.1), SR)


def test_folder_classes_take_every_nested_audio_file(tmp_path):
    data = tmp_path / "data"
    clip(data / "dog" / "a.wav")
    clip(data / "dog" / "park" / "take 2" / "b.flac")
    clip(data / "cat" / "c.WAV")
    clip(data / "cat" / ".d.wav")  # hidden
    clip(data / ".trash" / "bird" / "e.wav")  # a hidden folder is no class
    (data / "cat" / "notes.txt").write_text("not audio")
    assert data_kind(data) == "folder"
    assert [(p.relative_to(data).as_posix(), labels) for p, labels in labelled_files(data)] == [
        ("cat/c.WAV", ["cat"]), ("dog/a.wav", ["dog"]), ("dog/park/take 2/b.flac", ["dog"])]  # fmt: skip
    df = datafile_from(data, TABLE)
    assert [e.labels for e in df.entries] == [(1,), (0,), (0,)] and df.labels is TABLE
    assert df.targets().sum(0).tolist() == [2, 1, 0]


def test_csv_label_column_semicolons_zero_one_columns_and_paths(tmp_path, monkeypatch):
    clip(tmp_path / "audio" / "a.wav")
    clip(tmp_path / "audio" / "b.ogg")
    (tmp_path / "lists").mkdir()
    # the only other column is the label column; a name without extension finds b.ogg; ';' = several labels
    (tmp_path / "lists" / "one.csv").write_text("filename,kind\n../audio/a.wav,dog\n../audio/b,/m/cat;bird\n")
    df = datafile_from(tmp_path / "lists" / "one.csv", TABLE)
    assert [(e.wav.name, e.labels) for e in df.entries] == [("a.wav", (0,)), ("b.ogg", (1, 2))]
    # 'label' is the label column among several; 'wav' names the files; from the current folder
    (tmp_path / "two.txt").write_text("wav,session,label\naudio/a.wav,s1,cat\n")
    monkeypatch.chdir(tmp_path)
    assert data_kind(tmp_path / "two.txt") == "csv"
    assert [e.labels for e in datafile_from(tmp_path / "two.txt", TABLE).entries] == [(1,)]
    # several 0/1 columns, one per class
    (tmp_path / "hot.csv").write_text("filename,dog,cat,bird\naudio/a.wav,1,0,1\naudio/b.ogg,0,1,0\n")
    assert [e.labels for e in datafile_from(tmp_path / "hot.csv", TABLE).entries] == [(0, 2), (1,)]


def test_datafile_json_reads_as_before(tmp_path):
    wav = clip(tmp_path / "a.wav")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": str(wav), "labels": "/m/bird"}]}))
    assert data_kind(tmp_path / "d.json") == "json"
    assert [e.labels for e in datafile_from(tmp_path / "d.json", TABLE).entries] == [(2,)]
    (tmp_path / "d.data").write_text(" " + (tmp_path / "d.json").read_text())  # any name: '{' says JSON
    assert data_kind(tmp_path / "d.data") == "json"
    with pytest.raises(DataError, match="datafile JSON names labels by mid"):
        labelled_files(tmp_path / "d.json")


@pytest.mark.parametrize(
    "text, message",
    [
        ("filename,label\na.wav,\n", r"line 2 \(a.wav\): no label"),
        ("filename,label\n,dog\n", r"line 2: empty filename"),
        ("name,label\na.wav,dog\n", r"expected a 'filename' column"),
        ("filename,label\na.wav,horse\n", r"label 'horse' .* is not one of the labels \(dog, cat, bird\)"),
        ("filename,label\n", r"no rows"),
    ],
)
def test_bad_csv_is_one_error_naming_the_file(tmp_path, text, message):
    clip(tmp_path / "a.wav")
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(DataError, match=message) as err:
        datafile_from(tmp_path / "x.csv", TABLE)
    assert str(err.value).startswith(str(tmp_path / "x.csv")) and "\n" not in str(err.value)
