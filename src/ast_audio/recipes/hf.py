"""A Hugging Face ``datasets`` dataset on disk -> datafiles (``ast-audio prepare hf``).

Layout read (``--dataset PATH``, nothing is downloaded): a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``dataset_dict.json`` or
``state.json``), or a local ``load_dataset`` folder of ``*.parquet`` or ``*.arrow`` files
(split names from the file names, ``train-00000-of-00001.parquet``), read with the
packaged builder of that format. The audio column is read as encoded bytes
(``Audio(decode=False)``): ``datasets`` 4+ decodes audio through torchcodec, which this
package does not need; each clip is decoded here by :func:`ast_audio.audio.io.load_audio`.

- **Splits**: ``train``; validation from ``validation`` / ``valid`` / ``val`` / ``dev``,
  else a stratified share of train (``--valid-fraction``, ``--seed``: the csv recipe's
  split); ``test`` / ``eval`` when present becomes the evaluation datafile. A dataset
  without splits is train.
- **Audio written once, or read in place**: a clip stored as bytes (what ``save_to_disk``
  and parquet files hold) is decoded once, completely, and written as FLAC (24-bit, its
  own rate and channels) under ``OUT/audio/SPLIT/NNNNNN.flac``; a clip stored as a path
  to an existing file is checked and read in place. A clip that is missing, empty,
  undecodable or truncated, or a row without a label, is left out and listed in
  ``bad_files.txt`` as ``PATH:SPLIT[ROW] (its name): reason``.
- **Labels**: a ``ClassLabel`` column keeps its names in its order (the model's outputs
  are its ids); strings or integers become the sorted distinct values; a list column
  (``List(ClassLabel)`` or lists of strings) is multi-label. ``class_labels_indices.csv``
  has ``mid`` = ``display_name`` = the name.
- **Statistics** of the training clips in ``stats.json``, as the csv recipe computes them.

``ast-audio recipe hf --root PATH`` prepares, trains with ``hf.toml`` (the csv recipe's
settings) and the training clips' statistics, and evaluates on the test split if there
is one; the deliverable is the best model on validation.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..audio.io import load_audio
from ..base.fileio import atomic_write
from ..data.datafiles import read_datafile, write_datafile
from ..data.splits import check_valid_fraction, stratified_split
from ..errors import AudioError, ConfigError, DataError
from .common import default_workers, ensure_prepared, fingerprint, write_report, write_text_atomic
from .csvdata import LABEL_CSV, write_labels

log = logging.getLogger(__name__)

VALID_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test", "eval")
DATAFILES = {"train": "hf_train.json", "valid": "hf_valid.json", "test": "hf_test.json"}
CHUNK = 64  # rows read from the arrow table at a time


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("`ast-audio prepare hf` needs the datasets package: pip install 'ast-audio[hf]'") from None
    return datasets


def open_dataset(path: Path) -> dict:
    """``{split name: Dataset}`` of a ``save_to_disk`` folder or a folder of parquet / arrow files."""
    datasets = _datasets()
    if not path.is_dir():
        raise DataError("dataset folder not found", path)
    try:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            kinds = [k for k in ("parquet", "arrow") if next(path.rglob(f"*.{k}"), None) is not None]
            if not kinds:
                raise DataError("neither a save_to_disk folder nor a folder of .parquet / .arrow files", path)
            loaded = datasets.load_dataset(kinds[0], data_dir=str(path))
    except DataError:
        raise
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, ValueError, its own errors)
        raise DataError(f"not a readable Hugging Face dataset ({type(err).__name__}: {str(err)[:160]})", path) from None
    return dict(loaded) if isinstance(loaded, dict) else {"train": loaded}


def pick_splits(splits: dict, path: Path) -> dict:
    """``{"train": ds, "valid": ds or None, "test": ds or None}`` by the usual split names."""
    names = list(splits)
    train = splits.get("train") or (splits[names[0]] if len(names) == 1 else None)
    if train is None:
        raise DataError(f"no 'train' split (splits: {', '.join(names)})", path)
    pick = {"train": train, "valid": None, "test": None}
    for role, candidates in (("valid", VALID_NAMES), ("test", TEST_NAMES)):
        pick[role] = next((splits[n] for n in candidates if n in splits), None)
    return pick


class Labels:
    """How one label column turns into label names: ``names(value) -> [name, ...]`` (empty: no label)."""

    def __init__(self, feature, column: str, path: Path):
        datasets = _datasets()
        inner = getattr(feature, "feature", None)
        self.multilabel = inner is not None and not isinstance(feature, datasets.ClassLabel)
        base = inner if self.multilabel else feature
        self.class_names = list(base.names) if isinstance(base, datasets.ClassLabel) else None
        if not self.class_names and not (isinstance(base, datasets.Value) and base.dtype in _LABEL_DTYPES):
            raise ConfigError(f"{path}: label column {column!r} is {feature}; expected ClassLabel, strings or integers")
        self.column, self.path = column, path

    def names(self, value) -> list[str]:
        values = value if self.multilabel else [value]
        out = []
        for v in values or []:
            if v is None or (self.class_names is not None and v == -1):  # -1: ClassLabel's "no label"
                continue
            name = self.class_names[v] if self.class_names is not None else str(v).strip()
            if "," in name:
                raise DataError(f"label {name!r} contains a comma (datafile labels are comma-separated)", self.path)
            if name:
                out.append(name)
        return out


_LABEL_DTYPES = {"string", "large_string", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def _clip(args: tuple) -> tuple[str | None, str | None]:
    """``(wav path, None)`` or ``(None, reason)`` for one row's audio: bytes decoded once and
    written as FLAC to ``target``, a path checked in place."""
    import soundfile

    audio, target = args
    data, path = (audio or {}).get("bytes"), (audio or {}).get("path")
    if data is not None and len(data) == 0:
        return None, "empty audio (0 bytes)"
    try:
        if data is None:
            if not path:
                return None, "no audio (neither bytes nor a path)"
            load_audio(path, sample_rate=None, strict=True)
            return str(Path(path).resolve()), None
        suffix = Path(path or "").suffix or ".bin"
        with tempfile.NamedTemporaryFile(suffix=suffix, dir=target.parent, delete=False) as tmp:
            tmp.write(data)
        try:
            wave = load_audio(tmp.name, sample_rate=None, mono=False, strict=True)  # (C, S)
            rate = soundfile.info(tmp.name).samplerate
        finally:
            os.unlink(tmp.name)
    except AudioError as err:
        return None, err.reason
    except (RuntimeError, soundfile.LibsndfileError) as err:
        return None, f"not a decodable audio file ({str(err)[:120]})"
    atomic_write(target, lambda t: soundfile.write(str(t), wave.T.numpy(), rate, format="FLAC", subtype="PCM_24"))
    return str(target), None


def _read_split(ds, role: str, audio_column: str, labels: Labels, out: Path, source: Path, workers: int | None,
                progress: bool | None) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]], dict]:  # fmt: skip
    """``(rows, bad, counts)`` of one split: datafile rows in dataset order, ``(where, reason)``."""
    from tqdm.auto import tqdm

    datasets = _datasets()
    try:
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    except Exception as err:  # pyarrow's cast errors (ArrowNotImplementedError, ArrowInvalid), TypeError, ValueError
        raise ConfigError(f"{source}: column {audio_column!r} ({ds.features[audio_column]}) is not audio: "
                          f"{str(err)[:120]}") from None  # fmt: skip
    folder = out / "audio" / role
    folder.mkdir(parents=True, exist_ok=True)
    rows, bad, counts = [], [], {"written": 0, "in_place": 0}
    bar = tqdm(total=len(ds), desc=f"{role} clips", leave=False, disable=None if progress is None else not progress)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for start in range(0, len(ds), CHUNK):
            chunk = ds[start : start + CHUNK]
            jobs = [(a, folder / f"{start + i:06d}.flac") for i, a in enumerate(chunk[audio_column])]
            for i, ((wav, reason), value) in enumerate(zip(pool.map(_clip, jobs), chunk[labels.column], strict=True)):
                index = start + i
                name = (jobs[i][0] or {}).get("path") or "no name"
                where = f"{source}:{role}[{index}] ({name})"
                names = labels.names(value)
                if reason is None and not names:
                    reason = f"no label in column {labels.column!r}"
                if reason is not None:
                    bad.append((where, reason))
                    continue
                counts["written" if wav.startswith(str(folder)) else "in_place"] += 1
                rows.append((wav, names))
            bar.update(len(jobs))
    bar.close()
    return rows, bad, counts


def prepare(
    dataset_dir: str | os.PathLike, out: str | os.PathLike, *, audio_column: str = "audio",
    label_column: str = "label", valid_fraction: float = 0.2, seed: int = 0, audio_length: int = 1024,
    num_mel_bins: int = 128, workers: int | None = None, force: bool = True, progress: bool | None = None,
) -> dict:  # fmt: skip
    """A dataset on disk -> train / valid (/ test) datafiles, the label CSV and statistics in ``out``."""
    check_valid_fraction(valid_fraction)
    source = Path(dataset_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if not source.is_dir():
        raise DataError("dataset folder not found", source)
    metadata = sorted(p for p in source.rglob("*") if p.is_file())
    inputs = {
        "dataset": [fingerprint(p) for p in metadata], "audio_column": audio_column, "label_column": label_column,
        "valid_fraction": valid_fraction, "seed": seed, "audio_length": audio_length, "num_mel_bins": num_mel_bins,
    }  # fmt: skip

    def work() -> dict:
        return _prepare(source, out, audio_column, label_column, valid_fraction, seed, audio_length, num_mel_bins,
                        workers, progress)  # fmt: skip

    return ensure_prepared(out, "hf", inputs, work, force=force)


def _prepare(source, out, audio_column, label_column, valid_fraction, seed, audio_length, num_mel_bins, workers,
             progress) -> dict:  # fmt: skip
    from ..data.dataset import AudioDataset, norm_stats
    from ..features.contract import InputContract

    splits = pick_splits(open_dataset(source), source)
    train = splits["train"]
    for column in (audio_column, label_column):
        if column not in train.column_names:
            raise ConfigError(f"{source}: no column {column!r} (columns: {', '.join(train.column_names)})")
    labels = Labels(train.features[label_column], label_column, source)
    read = {}
    bad: list[tuple[str, str]] = []
    counts = {"written": 0, "in_place": 0}
    for role, ds in splits.items():
        if ds is not None:
            rows, split_bad, split_counts = _read_split(ds, role, audio_column, labels, out, source, workers, progress)
            read[role], bad = rows, bad + split_bad
            counts = {k: counts[k] + split_counts[k] for k in counts}
    if not read["train"]:
        raise DataError("no usable clip in the train split", source)
    names = labels.class_names or sorted({n for role in read for _, ns in read[role] for n in ns})
    if read.get("valid") is None:
        classes = {name: i for i, name in enumerate(names)}
        is_valid = stratified_split([classes[ns[0]] for _, ns in read["train"]], valid_fraction, seed)
        if not any(is_valid):
            raise DataError("too few clips per class for a validation split (a class needs at least 2)", source)
        read["valid"] = [r for r, v in zip(read["train"], is_valid, strict=True) if v]
        read["train"] = [r for r, v in zip(read["train"], is_valid, strict=True) if not v]
        split = "stratified"
    else:
        split = "dataset"
    write_labels(out, names)
    paths = {role: str(write_datafile(out / DATAFILES[role], rows)) for role, rows in read.items() if rows is not None}
    conf = InputContract(num_mel_bins=num_mel_bins, target_length=audio_length)
    mean, std = norm_stats(AudioDataset(read_datafile(paths["train"], out / LABEL_CSV), conf))
    stats = {"dataset_mean": mean, "dataset_std": std, "audio_length": audio_length, "num_mel_bins": num_mel_bins}
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    report = write_report(out, bad)
    return {
        "label_csv": str(out / LABEL_CSV), "labels": names, "multilabel": labels.multilabel, "split": split,
        "datafiles": paths, "clips": {role: len(rows) for role, rows in read.items()}, "audio": counts,
        "stats": stats, "bad_files": len(bad), "report": str(report),
    }  # fmt: skip


# --------------------------------------------------------------------------- recipe


def run(ctx) -> dict:
    from ..train.config import resolve_train_config
    from ..train.loop import train

    opts = ctx.options
    summary = prepare(
        ctx.root, ctx.data_dir, audio_column=opts["audio_column"], label_column=opts["label_column"],
        valid_fraction=float(opts["valid_fraction"]), seed=int(opts["split_seed"]),
        audio_length=ctx.train.get("audio_length", 1024), num_mel_bins=ctx.train.get("num_mel_bins", 128),
        workers=ctx.workers, force=ctx.force_prepare,
    )  # fmt: skip
    values = dict(ctx.train)
    if summary["multilabel"]:  # sigmoid scores, AudioSet's loss and metric
        values.update({k: v for k, v in (("loss", "BCE"), ("metrics", "mAP")) if k not in ctx.user_set})
    for key in ("dataset_mean", "dataset_std"):
        if key not in ctx.user_set:
            values[key] = summary["stats"][key]
    data = summary["datafiles"]
    cfg = resolve_train_config(values, {
        "data_train": data["train"], "data_val": data["valid"], "data_eval": data.get("test"),
        "label_csv": summary["label_csv"], "n_class": len(summary["labels"]), "exp_dir": str(ctx.exp_dir),
    })  # fmt: skip
    state = train(cfg)
    best = ctx.exp_dir / "models" / "best_audio_model.safetensors"
    return {
        "best_epoch": state.best_epoch, f"best_{cfg.metrics}": state.best_metric, "labels": summary["labels"],
        "clips": summary["clips"], "deliverable": str(best),
    }  # fmt: skip
