"""Event post-processing on synthetic scores: each step alone, then live tracking = offline."""

from __future__ import annotations

import numpy as np
import pytest

from ast_audio.errors import ConfigError
from ast_audio.infer.events import (
    EventTracker,
    PostProcessing,
    detect_events,
    drop_short,
    hysteresis,
    median_filter,
    merge_gaps,
    runs,
)
from ast_audio.infer.frames import FrameGrid

LABELS = ["a", "b", "c"]


def test_median_filter_removes_one_frame_spikes_and_keeps_edges():
    col = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=float)[:, None]
    out = median_filter(col, 3)[:, 0]
    assert out.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # spike gone, dip filled, edges repeated
    assert median_filter(col, 1).tolist() == col.tolist()
    assert median_filter(np.zeros((0, 2)), 3).shape == (0, 2)


def test_hysteresis_turns_on_at_on_and_off_below_off():
    scores = np.array([0.3, 0.6, 0.45, 0.4, 0.2, 0.45, 0.7])[:, None]
    active = hysteresis(scores, np.array([0.5]), np.array([0.35]))[:, 0]
    # 0.45 after being on stays on; 0.45 after being off does not switch on
    assert active.tolist() == [False, True, True, True, False, False, True]


def test_runs_gaps_and_short_events():
    active = np.zeros((12, 2), dtype=bool)
    active[1:3, 0] = active[4:8, 0] = active[11:, 0] = True
    active[5:6, 1] = True
    spans = runs(active)
    assert spans == [(0, 1, 3), (0, 4, 8), (0, 11, 12), (1, 5, 6)]
    assert merge_gaps(spans, 2) == [(0, 1, 8), (0, 11, 12), (1, 5, 6)]  # a gap of 1 frame closes, 3 stays
    assert merge_gaps(spans, 1) == spans  # runs are at least one frame apart
    assert drop_short(spans, 2) == [(0, 1, 3), (0, 4, 8)]


def test_detect_events_in_seconds_with_per_class_thresholds():
    scores = np.zeros((20, 3))
    scores[4:12, 0] = 0.9
    scores[8, 0] = 0.1  # a one-frame dip: the median filter removes it
    scores[10:16, 1] = 0.6  # above class b's 0.5, below the calibrated 0.7
    scores[2:18, 2] = 0.95  # the "nothing" class
    post = PostProcessing()
    got = detect_events(scores, 0.25, LABELS, post, duration=4.9, ignore=[2])
    assert [(e.label, e.start, e.end) for e in got] == [("a", 1.0, 3.0), ("b", 2.5, 4.0)]
    assert got[0].peak == pytest.approx(0.9)
    calibrated = detect_events(scores, 0.25, LABELS, post, calibrated=[0.5, 0.7, 0.5], ignore=[2])
    assert [e.label for e in calibrated] == ["a"]
    forced = detect_events(scores, 0.25, LABELS, PostProcessing(threshold=0.55), calibrated=[0.5, 0.7, 0.5])
    assert [e.label for e in forced] == ["c", "a", "b"]  # an explicit threshold wins; c is not ignored
    end = detect_events(scores[:11], 0.25, LABELS, post, duration=2.6)
    assert end[-1].end == pytest.approx(2.6)  # cut at the recording's end


def test_post_processing_defaults_in_frames_and_bad_values():
    assert PostProcessing().frames(0.25) == (3, 1, 2)
    assert PostProcessing().frames(0.1) == (9, 2, 5)  # the median is always odd
    assert PostProcessing(median=0).frames(0.25)[0] == 1
    on, off = PostProcessing().thresholds(3)
    assert on.tolist() == [0.5] * 3 and off.tolist() == [0.375] * 3
    with pytest.raises(ConfigError, match="thresholds for 3 classes"):
        PostProcessing(threshold=[0.5, 0.5]).thresholds(3)
    with pytest.raises(ConfigError, match="off_ratio"):
        PostProcessing(off_ratio=0)


@pytest.mark.parametrize("seed", range(4))
def test_tracker_gives_the_offline_events(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        scores = rng.random((int(rng.integers(1, 50)), 3)) ** rng.uniform(0.3, 3)
        post = PostProcessing(median=float(rng.choice([0, 0.25, 0.75, 1.25])),
                              min_duration=float(rng.choice([0, 0.25, 0.75])),
                              min_gap=float(rng.choice([0, 0.5, 1.0])))  # fmt: skip
        offline = detect_events(scores, 0.25, LABELS, post, ignore=[1])
        tracker = EventTracker(LABELS, 0.25, post, ignore=[1])
        changes = [c for row in scores for c in tracker.push(row)] + tracker.finish()
        starts = sorted((c.index, c.time) for c in changes if c.kind == "start")
        ends = sorted((c.index, c.time) for c in changes if c.kind == "end")
        assert starts == sorted((e.index, e.start) for e in offline)
        assert ends == sorted((e.index, e.end) for e in offline)


def test_tracker_reports_as_soon_as_it_knows():
    post = PostProcessing(median=0.75, min_duration=0.5, min_gap=0.5)  # 3, 2, 2 frames
    tracker = EventTracker(["a"], 0.25, post)
    rows = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    seen = {}
    for i, v in enumerate(rows):
        for c in tracker.push(np.array([v])):
            seen[c.kind] = (i, c.time)
    # on at frame 2, lasting 2 frames at frame 3, known one frame later (the median's look-ahead)
    assert seen["start"] == (4, 0.5)
    # off at frame 5; the gap of 2 frames has passed at frame 6, known at frame 7
    assert seen["end"] == (7, 1.25)
    assert tracker.finish() == []


def test_frame_grid_windows_are_centred_and_cut_at_the_ends():
    grid = FrameGrid(hop=0.25, window=1.0, rate=16000)
    assert grid.count(16000 * 10) == 40 and grid.count(16000 * 10 + 1) == 41 and grid.count(0) == 1
    assert grid.span(0, 160000) == (0, 10000)  # centre 0.125 s, half a window before it cut
    assert grid.span(10, 160000) == (34000, 50000)  # centre 2.625 s
    assert grid.span(39, 160000) == (150000, 160000)
    assert grid.needed(10) == 50000
    with pytest.raises(ConfigError, match="positive"):
        FrameGrid(hop=0, window=1, rate=16000)
