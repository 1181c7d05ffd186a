"""Training data: datafiles (:mod:`.datafiles`), label tables (:mod:`.labels`, the original
tables in ``tables/``), the dataset and its sampler (:mod:`.dataset`) and WebDataset shards
(:mod:`.shards`). The datafile functions stay importable from ``ast_audio.data.datafiles``."""

from .datafiles import (
    Datafile,
    balanced_weights,
    check_audio_files,
    check_datafile,
    read_datafile,
    read_weights,
    weight_file_for,
    write_datafile,
    write_weights,
)

__all__ = [
    "Datafile", "balanced_weights", "check_audio_files", "check_datafile", "read_datafile", "read_weights",
    "weight_file_for", "write_datafile", "write_weights",
]  # fmt: skip
