"""The request queue: concurrent requests share forward passes.

Every request hands its decoded waveform to :class:`Batcher` and awaits the result. One
task gathers what is pending (up to ``max_batch`` requests, waiting at most ``max_wait``
seconds after the first one), groups it by what is asked (tags with the same
aggregation, timelines with the same window and hop, embeddings) and gives each group to
the tagger in one call, so the windows of every request in the group share the engine's
batches of ``batch_size`` model windows. The model runs on one worker thread: calls never
overlap, and requests that arrive while it computes form the next batch. ``top_k`` and the
event post-processing differ per request and are applied to the scores afterwards
(:func:`~ast_audio.infer.results.top_labels`, :meth:`~ast_audio.infer.AudioTagger.frame_events`,
what ``timeline`` does with its frames).

When an engine call fails, its requests are run again one by one, so only the request at
fault gets the error. ``stop()`` finishes everything already queued before it returns
(graceful shutdown).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field

import numpy as np
import torch

from ..infer.engine import AudioTagger
from ..infer.events import PostProcessing
from ..infer.results import Timeline, top_labels
from .metrics import Metrics

__all__ = ["Batcher", "Job", "overall_labels"]

_STOP = object()


@dataclass
class Job:
    """One request: ``kind`` is ``"predict"``, ``"timeline"`` or ``"embed"``; ``key`` holds the
    settings a whole engine call shares (predict: the aggregate; timeline: window and hop, ``None``
    for the tagger's defaults, and the aggregate); ``top_k`` and ``post`` (a timeline's event
    post-processing) are the request's own."""

    kind: str
    wave: torch.Tensor  # (S,) mono at the tagger's rate
    key: tuple = ()
    top_k: int = 5
    post: PostProcessing = field(default_factory=PostProcessing)
    future: asyncio.Future | None = field(default=None, repr=False)


class Batcher:
    """Gathers pending :class:`Job` s into shared calls of ``tagger`` (see the module notes)."""

    def __init__(self, tagger: AudioTagger, *, max_batch: int = 16, max_wait: float = 0.01,
                 metrics: Metrics | None = None):  # fmt: skip
        self.tagger = tagger
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.metrics = metrics or Metrics()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ast-audio-model")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued job, then release the worker thread."""
        if self._task is None:
            return
        await self._queue.put(_STOP)
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    async def submit(self, job: Job):
        """The job's result: a :class:`Prediction`, :class:`Timeline` or :class:`Embedding`."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batching queue is not running")
        job.future = asyncio.get_running_loop().create_future()
        await self._queue.put(job)
        return await job.future

    async def on_model_thread(self, fn, *args):
        """``fn(*args)`` on the worker thread, between engine calls (for what uses the model
        outside the queue, like attention maps)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batching queue is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            await self._run(batch)
        while not self._queue.empty():  # jobs queued behind the stop: still answered
            item = self._queue.get_nowait()
            if item is not _STOP:
                await self._run([item])

    async def _run(self, batch: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            if not job.future.cancelled():  # its request timed out or went away
                groups.setdefault((job.kind, *job.key), []).append(job)
        loop = asyncio.get_running_loop()
        for jobs in groups.values():
            try:
                results = await loop.run_in_executor(self._executor, self._call, jobs)
            except Exception as err:  # noqa: BLE001 (handed to the request at fault, which answers it)
                if len(jobs) > 1:  # one request's fault must not fail the others: each alone
                    for job in jobs:
                        await self._run([job])
                    continue
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(err)
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _call(self, jobs: list[Job]) -> list:
        """One engine call for jobs of one kind and key (on the worker thread)."""
        kind, waves, t = jobs[0].kind, [job.wave for job in jobs], self.tagger
        if kind == "predict":
            (aggregate,) = jobs[0].key
            out = t.predict(waves, sample_rate=t.rate, top_k=0, aggregate=aggregate)
            for job, p in zip(jobs, out, strict=True):
                p.labels = top_labels(p.scores, t.labels, job.top_k)
            windows = sum(len(p.spans) for p in out)
        elif kind == "timeline":
            window, hop, aggregate = jobs[0].key
            post = jobs[0].post
            out = t.timeline(waves, window, hop, sample_rate=t.rate, post=post, top_k=0, aggregate=aggregate)
            for job, tl in zip(jobs, out, strict=True):
                for w in tl.windows:
                    w.labels = top_labels(w.scores, t.labels, job.top_k)
                if job.post != post:  # the frames are shared; the events are this request's own
                    tl.events = t.frame_events(tl.scores, t.frame_grid(window, hop).hop, tl.duration, job.post, tl.known)
            windows = sum(len(tl.windows) for tl in out)
        elif kind == "embed":
            out = t.embed(waves, sample_rate=t.rate)
            windows = sum(len(e.spans) for e in out)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
        self.metrics.batch(len(jobs), windows)
        return out


def overall_labels(timeline: Timeline, labels: list[str], top_k: int) -> list[tuple[str, float]]:
    """A timeline's top labels over the whole recording: each label's maximum over the windows."""
    return top_labels(np.max(timeline.scores, axis=0), labels, top_k)

