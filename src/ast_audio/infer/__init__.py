"""Inference for people: tags, timelines, embeddings and attention maps for any recording.

:class:`AudioTagger` wraps one checkpoint, or several (an ensemble), from any source
:func:`~ast_audio.checkpoints.load.load_model` accepts, and takes paths, lists of paths or
waveforms with their sample rate.

The package, by job:

- ``engine``: :class:`AudioTagger`, from loaded audio to windows, batches, the model and
  per-file results;
- ``results``: the result dataclasses and their JSON/CSV rows;
- ``windows``: window spans and window merging; ``attention``: rollout and attention grids;
- ``frames``: the detection grid (a window centred on every hop); ``events``: the event
  post-processing (median filter, hysteresis, gaps, short events) and its live tracker;
  ``stream``: :meth:`AudioTagger.stream` over audio blocks as they arrive;
- ``inputs``: paths and waveforms in, mono waveforms at the model's rate out;
- ``sharded``: ``predict`` / ``embed`` of many files into resumable shards, one per process.

Device and precision choice live in :mod:`ast_audio.base.runtime`, the attention plot in
:mod:`ast_audio.base.plots` (both leaf modules: training and evaluation use them too).

Decisions, in one place:

- **Labels** are ``model.info.labels`` (``load_model`` fills the AudioSet and Speech
  Commands names for the published checkpoints; ours carry their own); a checkpoint
  without names gets ``"class N"``.
- **Features** follow the checkpoint's input contract (``model.input_contract``: rate,
  mono policy, bins, frames, length, statistics, activation) through the batched
  pipeline of training and evaluation (:mod:`ast_audio.features.pipeline`). A checkpoint without
  normalisation statistics uses AudioSet's, with one logged warning (the one policy,
  :func:`ast_audio.model.info.missing_statistics`).
- **Model windows.** One model input covers ``input_tdim`` frames, i.e.
  ``25 ms + (input_tdim - 1) * 10 ms`` of audio (10.255 s for 1024 frames). A clip that
  fits is one window, padded with zero frames as in training. A longer clip is cut into
  windows of that length every ``hop`` seconds (default: half a window), the last one
  aligned to the end of the clip, so every sample is seen and nothing is silently cut.
- **Aggregation over windows** (``predict``): the *maximum* probability of each label
  over the windows (``aggregate="max"``, the default: "does this sound occur anywhere in
  the recording"), or the mean (``aggregate="mean"``: "how much of the recording is
  it"). For a clip that fits one window both are that window's scores.
- **Scores** are probabilities: sigmoid for multi-label checkpoints, softmax for
  single-label ones (``info.multilabel``).
- **Ensembles**: each member computes its own features (its own length, strides,
  sample rate and statistics) and windows, aggregates over its windows, and the
  members' probabilities are averaged. Members must have the same number of labels.
- **Timelines** (``method="frames"``, the default): a frame every ``hop`` (0.1) seconds,
  scored by a ``window`` (0.5 s, at most the model's input) centred on it, then the
  post-processing of :mod:`.events`; events carry onsets and offsets at the hop's
  resolution. These defaults live in :meth:`AudioTagger.frame_grid` (from
  :mod:`.frames`) and :class:`PostProcessing`, and ``predict --timeline``, ``listen``, the
  service and the page all take them from there, so one file gives one set of events.
  ``method="windows"``: windows of ``window`` (10) seconds every ``hop`` (5) seconds, the last one
  aligned to the end. A timeline window shorter than the model input is padded as in
  training; a longer one is scored like ``predict`` scores a clip (model windows inside
  it, aggregated). Consecutive windows where a label's score is at least ``threshold``
  become one :class:`Event` spanning them.
- **Embeddings**: the pooled embedding (mean of the ``cls`` and ``dist`` outputs) of
  each model window; for a clip longer than one window, ``embedding`` is their mean and
  the per-window ones are kept too. Token grids (``[f_dim, t_dim, dim]``) on request.
- **Attention**: rollout (Abnar and Zuidema 2020: heads averaged, identity added, rows
  renormalised, multiplied through the layers) or the last layer's attention, from the
  ``cls`` and ``dist`` tokens to the patches, on the patch grid and spread back onto
  ``(frames, mel bins)``; :func:`plot_attention` draws spectrogram, map and top labels
  into a PNG (a matplotlib Figure on its own Agg canvas; no pyplot, no backend change).

Everything runs under ``torch.inference_mode()``; ``device=None`` picks CUDA when
available, else the CPU (:func:`ast_audio.base.runtime.pick_device`).
"""

from ..base.plots import plot_attention
from ..base.runtime import PRECISIONS, pick_device
from .attention import attention_grid, grid_to_frames
from .engine import AGGREGATES, AudioTagger
from .events import EventChange, EventTracker, PostProcessing, detect_events
from .frames import FrameGrid
from .inputs import Audio
from .results import AttentionMap, Embedding, Event, FrameScores, Prediction, Timeline, Window
from .windows import merge_events, window_spans

__all__ = [
    "AGGREGATES",
    "PRECISIONS",
    "AttentionMap",
    "Audio",
    "AudioTagger",
    "Embedding",
    "Event",
    "EventChange",
    "EventTracker",
    "FrameGrid",
    "FrameScores",
    "PostProcessing",
    "Prediction",
    "Timeline",
    "Window",
    "attention_grid",
    "detect_events",
    "grid_to_frames",
    "merge_events",
    "pick_device",
    "plot_attention",
    "window_spans",
]
