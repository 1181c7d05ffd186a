"""Loader throughput from WebDataset shards against files and the waveform cache.

    .venv/bin/python bench/shards.py [--clips N] [--workers 1 2] [--no-write]

The AudioSet recipe's training items (ten seconds, 1024 frames, 128 bins, SpecAugment
freqm 48 / timem 192, mixup 0.5, batch 12, filterbanks in the loader workers), out of a
``DataLoader`` with each number of ``--workers``, for two layouts of the same clips: 16 kHz
WAV and 44.1 kHz FLAC. Sources:

- files: ``AudioDataset`` over the datafile (a decode per clip, a resample for FLAC);
- waveform cache: the same with ``cache_dir``, its second epoch (decoded clips as .npy);
- shards: ``ShardStream`` over ``ast-audio shard`` output of the datafile (the files' own
  bytes, read front to back from tar files);
- FLAC 16 kHz shards (``--flac``): the clips decoded, resampled once and stored as 16 kHz
  FLAC, so the loader decodes but does not resample.

Each figure is one epoch through a fresh loader (starting its workers included), best of
``--repeats``. Writes the table between the ``bench:shards`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import (
    AUDIOSET_AUGMENTATION,
    AUDIOSET_INPUT,
    BENCHMARKS,
    machine,
    publish,
    write_clips,
    write_labels,
)

from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, EpochSampler
from ast_audio.data.shards import ShardStream, read_shards, write_shards

START, END = "<!-- bench:shards:start -->", "<!-- bench:shards:end -->"
BATCH = 12


def epoch_rate(make_loader, repeats: int) -> float:
    """Clips per second of one epoch through a fresh loader, best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        begin = time.perf_counter()
        clips = sum(len(batch["target"]) for batch in make_loader())
        best = max(best, clips / (time.perf_counter() - begin))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="ten-second clips per layout (48)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers (1 2)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per figure, best kept (2)")
    parser.add_argument("--note", default="", help="a sentence added under the table (the machine's load)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        labels = write_labels(work / "labels.csv", 10)
        for layout, rate, fmt in (("16 kHz WAV", 16000, "WAV"), ("44.1 kHz FLAC", 44100, "FLAC")):
            key = fmt.lower()
            datafile = write_clips(work / key, args.clips, rate, fmt)
            df = read_datafile(datafile, labels)
            size = max(1, sum(e.wav.stat().st_size for e in df.entries) // 8)  # about 8 shards
            write_shards(datafile, labels, work / f"shards-{key}", max_size=size, progress=False)
            sources = {"files": None, "waveform cache": work / f"cache-{key}", "shards": work / f"shards-{key}"}
            if fmt == "FLAC":
                write_shards(datafile, labels, work / "shards-flac16", max_size=size // 3, flac=True, progress=False)
                sources["shards, FLAC 16 kHz"] = work / "shards-flac16"
            for source, where in sources.items():
                for workers in args.workers:
                    if source.startswith("shards"):
                        stream = ShardStream(read_shards(where, labels), AUDIOSET_INPUT, AUDIOSET_AUGMENTATION,
                                             buffer=64)  # fmt: skip
                        stream.set_epoch(1)

                        def make_loader(stream=stream, workers=workers):
                            return stream.loader(BATCH, num_workers=workers)
                    else:
                        dataset = AudioDataset(df, AUDIOSET_INPUT, AUDIOSET_AUGMENTATION,
                                               cache_dir=str(where) if where else None)  # fmt: skip
                        sampler = EpochSampler(len(dataset), 0)
                        sampler.set_epoch(1)

                        def make_loader(dataset=dataset, sampler=sampler, workers=workers):
                            return dataset.loader(BATCH, sampler, workers)

                        if where:  # the timed epochs read a warm cache
                            epoch_rate(make_loader, 1)
                    rate_s = epoch_rate(make_loader, args.repeats)
                    rows.append((layout, source, workers, rate_s))
                    print(f"{layout}, {source}, {workers} workers: {rate_s:.1f} clips/s", file=sys.stderr, flush=True)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Loader: shards, files, waveform cache (`bench/shards.py`)",
        "",
        f"{args.clips} ten-second clips per layout, the AudioSet recipe's training items (1024 frames, SpecAugment, "
        f"mixup 0.5, batch {BATCH}, filterbanks in the workers). Run {when} on {machine()}. One epoch through a "
        f"fresh loader (worker start included), best of {args.repeats}; shards of about an eighth of the data each.",
        "",
        "| layout | source | workers | clips/s |",
        "| --- | --- | ---: | ---: |",
        *(f"| {layout} | {source} | {workers} | {rate:.1f} |" for layout, source, workers, rate in rows),
    ]
    if args.note:
        lines += ["", args.note]
    lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
