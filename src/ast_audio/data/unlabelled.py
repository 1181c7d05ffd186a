"""Unlabelled audio for self-supervised pretraining: any folders, datafiles, CSVs or shards,
labels ignored, long recordings cut into random crops.

:func:`unlabelled_sources` lists the recordings of each path: a folder (every audio file
below it, at any depth, class folders or not), a datafile JSON (its ``wav`` entries), a
CSV (its ``filename`` column) or shards (every audio member of the tars). A recording of
``d`` seconds gives ``max(1, d // clip)`` draws per epoch (``clip``: the model's input
length), each a crop at a random place, drawn afresh every epoch: an hour of ambience
is 360 ten-second views, not one. :class:`UnlabelledDataset` is map-style, so the epoch
sampler, the loader workers and the collate of labelled training (filterbanks in the
loader or on the device) serve it unchanged; its items carry an empty target.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from ..audio.io import AUDIO_EXTENSIONS, audio_info, resample
from ..errors import AudioError, DataError
from ..features.contract import InputContract
from ..features.pipeline import NONE, load_clip
from .datafiles import _resolve_wav
from .dataset import Draw, collate, draw_item, model_input
from .folders import audio_files
from .labelled import data_kind, labelled_files
from .shards import decode, is_shard_spec

__all__ = ["Recording", "UnlabelledDataset", "unlabelled_sources"]

log = logging.getLogger(__name__)

_NO_TARGET = torch.zeros(0)


@dataclass(frozen=True)
class Recording:
    """One recording: a file, or a member of a shard (``member`` set); its length in seconds."""

    path: Path
    seconds: float
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def _file(path: Path, skip_bad: bool, skipped: list[str]) -> Recording | None:
    try:
        info = audio_info(path)
    except AudioError as err:
        if not skip_bad:
            raise
        skipped.append(f"{path}: {err.reason}")
        return None
    return Recording(path, info.frames / info.sample_rate)


def _datafile_wavs(path: Path) -> list[Path]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["data"]
        return [_resolve_wav(str(e["wav"]), path.parent) for e in entries]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the datafile: {err}", path) from None
    except (KeyError, TypeError) as err:
        raise DataError(f"not a datafile ({{'data': [{{'wav': ...}}, ...]}}): missing {err}", path) from None


def _shard_members(spec: str) -> list[Recording]:
    from .shards import _expand

    folder = Path(spec)
    tars = sorted(folder.glob("*.tar")) if folder.is_dir() else _expand(spec)
    out = []
    for tar in tars:
        try:
            with tarfile.open(tar) as fh:  # headers only: members are read when drawn
                names = [m.name for m in fh.getmembers() if m.isfile()]
        except (OSError, tarfile.TarError) as err:
            raise DataError(f"cannot read the shard: {err}", tar) from None
        out += [Recording(tar, math.nan, n) for n in names if Path(n).suffix.lower() in AUDIO_EXTENSIONS]
    return out


def unlabelled_sources(paths: list[str | os.PathLike], *, skip_bad: bool = False) -> tuple[list[Recording], list[str]]:
    """The recordings of ``paths`` (see the module notes) and the unreadable files left out
    (``skip_bad``; otherwise the first one is an :class:`~ast_audio.errors.AudioError`)."""
    recordings: list[Recording] = []
    skipped: list[str] = []
    for spec in paths:
        text = os.fspath(spec)
        if is_shard_spec(text):
            recordings += _shard_members(text)
            continue
        path = Path(text)
        if path.is_dir():
            files = audio_files(path)
            if not files:
                raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in the folder", path)
        elif data_kind(path) == "json":
            files = _datafile_wavs(path)
        else:  # a CSV: its filename column, labels ignored
            files = [wav for wav, _ in labelled_files(path)]
        recordings += [r for f in files if (r := _file(Path(f), skip_bad, skipped)) is not None]
    if not recordings:
        raise DataError("no readable recordings", ", ".join(os.fspath(p) for p in paths))
    return recordings, skipped


def _read_crop(recording: Recording, start: float, seconds: float, contract: InputContract) -> torch.Tensor:
    """``seconds`` of a file from ``start``, mono, at the contract's rate (only that part is decoded)."""
    try:
        with soundfile.SoundFile(os.fsencode(recording.path)) as fh:
            rate = fh.samplerate
            fh.seek(int(start * rate))
            data = fh.read(int(math.ceil(seconds * rate)) + 1, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise AudioError(f"not decodable ({err})", recording.path) from None
    if not len(data) or not np.isfinite(data).all():
        raise AudioError("no finite audio samples in the crop", recording.path)
    waveform = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return resample(waveform, rate, contract.sample_rate) if rate != contract.sample_rate else waveform


class UnlabelledDataset(torch.utils.data.Dataset):
    """Draws of random crops of ``recordings`` (see the module notes); index ``i`` is draw
    ``i`` of the epoch's list, which names a recording. A :class:`~ast_audio.data.dataset.Draw`
    from the epoch sampler seeds the crop, so crops differ every epoch and are the same for
    any number of workers or processes."""

    def __init__(self, recordings: list[Recording], contract: InputContract, *, seed: int = 0,
                 fbank_on: str = "loader", skip_bad: bool = False):  # fmt: skip
        if not contract.resample:
            raise DataError("pretraining decodes crops at the contract's rate: resample=False is not supported",
                            recordings[0].path)  # fmt: skip
        self.recordings, self.contract, self.seed = recordings, contract, seed
        self.fbank_on, self.skip_bad = fbank_on, skip_bad
        clip = contract.samples / contract.sample_rate
        self.draws = [i for i, r in enumerate(recordings) for _ in range(self._views(r, clip))]

    @staticmethod
    def _views(recording: Recording, clip: float) -> int:
        return 1 if math.isnan(recording.seconds) else max(1, int(recording.seconds // clip))

    def __len__(self) -> int:
        return len(self.draws)

    def _waveform(self, recording: Recording, rng: np.random.Generator) -> torch.Tensor:
        contract = self.contract
        if recording.member is not None:
            with tarfile.open(recording.path) as fh:
                member = fh.extractfile(recording.member)
                data = member.read() if member is not None else b""
            waveform, _ = decode(data, recording.name, contract)
        else:
            clip = contract.samples / contract.sample_rate
            spare = recording.seconds - clip
            if spare <= 0:
                return load_clip(recording.path, contract)[0]
            return _read_crop(recording, float(rng.uniform(0, spare)), clip, contract)
        spare = len(waveform) - contract.samples
        if spare > 0:
            start = int(rng.integers(spare + 1))
            waveform = waveform[start : start + contract.samples]
        return waveform

    def __getitem__(self, key: int | Draw) -> dict:
        draw = Draw(*key) if isinstance(key, tuple) else Draw(int(key), 0, int(key))
        rng = np.random.default_rng([self.seed, draw.epoch, draw.position, draw.index])
        recording = self.recordings[self.draws[draw.index]]
        try:
            waveform = self._waveform(recording, rng)
        except AudioError as err:
            return {"bad": (err.path or recording.name, err.reason)}
        return draw_item(waveform, self.contract.sample_rate, _NO_TARGET, rng, self.contract, NONE)

    def collate(self, items: list[dict]) -> dict:
        return collate(items, self.contract, NONE, fbank_on=self.fbank_on, skip_bad=self.skip_bad)

    def loader(self, batch_size: int, sampler=None, num_workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=self.collate, **kwargs
        )

    def model_input(self, batch: dict, device: torch.device | str) -> torch.Tensor:
        """A collated batch as normalised features ``[B, T, F]`` on ``device``."""
        return model_input(batch, device, self.contract, NONE)[0]
