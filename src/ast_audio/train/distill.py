"""Distillation: a small AST student taught by a checkpoint (or an ensemble) on labelled
and unlabelled audio, with consistent teaching.

:func:`distill` loads the teachers, runs them once over every (clip, augmentation draw) into
the store (:mod:`~ast_audio.train.teacher_store`, resumable, one share per rank under
``torchrun``), then trains the student with the ordinary training run
(:class:`~ast_audio.train.loop.Run`: validation, ``result.csv``, best model, resume, the
experiment-folder lock) on the same draws replayed from their seeds; the teacher does not
run while the student trains. Epoch ``e`` takes draw ``(e - 1) % draws`` of each clip.

The loss of a draw (:func:`distill_loss`): to the teacher's scores, BCE for a multi-label
teacher (sigmoid) or KL divergence with temperature ``T`` for a single-label one (softmax;
scaled by ``T**2``); where the draw has labels, ``(1 - lambda) * teacher + lambda * labels``
(EfficientAT's weighting, lambda 0.1). The teacher saw the draw's mixed audio, so its
target already is the mix's; the labels of a mix are mixed with the mix's weight.

A student with the clip-statistics branch (``clip_stats``) is taught by the teachers'
transformers alone (each teacher's branch left out,
:func:`~ast_audio.train.clipstats.transformer_logits`), and its own branch is fitted on
the labelled clips once it has trained, as ``train`` fits one: transformer teaches
transformer, and the statistics are not counted twice. A student without the branch is
taught by the teachers' whole output.

The student is an ordinary checkpoint: the teacher's input contract (rate, bins, length,
statistics, activation), the teacher's labels in the teacher's order, and ``extra``
naming the teachers and the preset.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..base.distributed import Dist
from ..base.fileio import clean_stale_temporaries
from ..base.runtime import autocast
from ..checkpoints.load import load_model
from ..data.datafiles import Datafile, Entry
from ..data.dataset import AudioDataset, EpochSampler
from ..data.folders import audio_files
from ..data.labelled import datafile_from
from ..data.labels import LabelTable, write_label_table
from ..data.shards import is_shard_spec
from ..data.source import TrainingData
from ..errors import ConfigError, DataError
from ..features.pipeline import Augmentation
from ..model.ast import ASTModel
from ..model.info import ModelInfo
from ..model.students import STUDENTS, student_config
from .config import STUDENT_TRAINING, TrainConfig
from .loop import Run, RunState, _bar_disabled, train
from .resume import RESUME_FILE, load_resume
from .teacher_store import ReplayDataset, StoredOutputs, Teacher, TeacherStore, clip_digest, draw_seeds

__all__ = ["DistillConfig", "DistillRun", "distill", "distill_loss"]


@dataclass
class DistillConfig:
    """What distillation adds to a training run's settings (``train`` holds the rest: the
    validation data, epochs, batch, lr, augmentation, seed, device...)."""

    teachers: list[str]
    student: str
    data_train: str | None = None  # labelled clips: a datafile JSON, a CSV or a folder of class folders
    unlabelled: list[str] = field(default_factory=list)  # folders of any audio files
    draws: int | None = None  # augmentation draws stored per clip (None: one per epoch)
    top_k: int = 20  # teacher scores kept per draw
    temperature: float = 1.0  # KL's, single-label teachers
    label_weight: float = 0.1  # lambda: the labels' share of the loss where a draw has labels
    metrics: str | None = None  # None: acc for a single-label teacher, mAP for a multi-label one
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**STUDENT_TRAINING))

    def check(self) -> None:
        if not self.teachers:
            raise ConfigError("--teacher is required (one checkpoint, or several for an ensemble)")
        if self.student not in STUDENTS:
            raise ConfigError(f"unknown student {self.student!r}; choose one of {', '.join(STUDENTS)}")
        if not self.data_train and not self.unlabelled:
            raise ConfigError("give training audio: --data-train (labelled) and/or --unlabelled DIR")
        if self.data_train and is_shard_spec(self.data_train):
            raise ConfigError(f"{self.data_train}: distillation reads a datafile, a CSV or a folder, not shards")
        if self.draws is not None and self.draws < 1:
            raise ConfigError(f"draws must be a positive integer, got {self.draws!r}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {self.top_k!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}")
        if not 0 <= self.label_weight <= 1:
            raise ConfigError(f"label_weight must be in [0, 1], got {self.label_weight!r}")

    @property
    def draws_per_clip(self) -> int:
        return self.draws or self.train.n_epochs


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor,
                 activation: str, temperature: float = 1.0, label_weight: float = 0.1) -> torch.Tensor:  # fmt: skip
    """The mean over a batch of the loss to the teacher's scores ``teacher`` ``[B, C]`` and, for
    the draws with ``labelled`` 1, to the (mixed) ``labels`` ``[B, C]`` (see the module notes)."""
    logits = logits.float()
    if activation == "softmax":
        t = temperature
        soft = teacher.clamp_min(0) ** (1 / t)  # the teacher's softmax at temperature t, from its probabilities
        soft = soft / soft.sum(-1, keepdim=True)
        to_teacher = t * t * F.kl_div(F.log_softmax(logits / t, -1), soft, reduction="none").sum(-1)
        to_labels = -(labels * F.log_softmax(logits, -1)).sum(-1)
    else:
        to_teacher = F.binary_cross_entropy_with_logits(logits, teacher, reduction="none").mean(-1)
        to_labels = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
    weight = label_weight * labelled.to(logits)
    return ((1 - weight) * to_teacher + weight * to_labels).mean()


def _unlabelled_entries(folders: list[str]) -> list[Entry]:
    entries = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise DataError("not a folder (--unlabelled takes folders of audio files)", path)
        files = audio_files(path)
        if not files:
            raise DataError("no audio files in this folder", path)
        entries += [Entry(f.resolve(), ()) for f in files]
    return entries


def training_clips(settings: DistillConfig, labels: LabelTable) -> tuple[Datafile, np.ndarray]:
    """The labelled clips (labels matched to the teacher's by name) and then the unlabelled
    ones, as one datafile, and which of its clips are labelled."""
    labelled = datafile_from(settings.data_train, labels) if settings.data_train else None
    entries = list(labelled.entries) if labelled else []
    entries += _unlabelled_entries(settings.unlabelled)
    flags = np.zeros(len(entries), dtype=bool)
    flags[: len(labelled) if labelled else 0] = True
    source = Path(settings.data_train or settings.unlabelled[0])
    return Datafile(source, labels, entries, list(labelled.skipped) if labelled else []), flags


@dataclass
class DistillRun(Run):
    """A training run whose loss is :func:`distill_loss` against the stored teacher outputs."""

    settings: DistillConfig | None = None
    outputs: StoredOutputs | None = None

    @classmethod
    def build_with(cls, settings: DistillConfig, teacher: Teacher, cfg: TrainConfig, device: torch.device, ctx: Dist,
                   exp: Path) -> DistillRun:  # fmt: skip
        """Fill (or finish filling) the teacher store, then build the student's run on it."""
        labels, contract = teacher.labels, teacher.contract
        if ctx.main:
            write_label_table(labels, cfg.label_csv)
        clips, flags = training_clips(settings, labels)
        valid = datafile_from(cfg.data_val, labels)
        augmentation = Augmentation(freqm=cfg.freqm, timem=cfg.timem, mixup=cfg.mixup, noise=cfg.noise)
        fbank_on = cfg.fbank_on if cfg.fbank_on != "auto" else "device" if device.type == "cuda" else "loader"
        draws = settings.draws_per_clip
        replay = ReplayDataset(clips, contract, augmentation, draw_seeds(cfg.seed, len(clips), draws), flags,
                               fbank_on=fbank_on, cache_dir=cfg.cache_dir)  # fmt: skip
        store = _store(settings, teacher, exp, clips, flags, augmentation, len(clips) * draws)
        if ctx.main:
            if store.folder.exists():  # what a kill -9 mid-write left
                clean_stale_temporaries(store.folder)
            store.open()
        ctx.barrier()
        for model in teacher.models:
            model.to(device)
        store.fill(teacher, replay, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers, rank=ctx.rank,
                   world=ctx.world, progress=cfg.progress if ctx.main else False)  # fmt: skip
        ctx.barrier()
        outputs = store.read(len(labels), contract.activation)
        replay.seeds = outputs.seeds.reshape(len(clips), draws)  # the student replays the stored draws
        for model in teacher.models:
            model.cpu()
        sampler = EpochSampler(len(clips), cfg.seed, ctx.rank, ctx.world)
        data = TrainingData(clips, replay, sampler)
        val_set = AudioDataset(valid, contract, fbank_on=fbank_on, cache_dir=cfg.cache_dir)
        loader = data.loader(cfg.batch_size // ctx.world, cfg.num_workers, pin_memory=device.type == "cuda",
                             persistent_workers=cfg.num_workers > 0)  # fmt: skip
        torch.manual_seed(cfg.seed)
        model = ASTModel.from_config(student_config(settings.student, len(labels), contract.num_mel_bins,
                                                    contract.target_length, clip_stats=cfg.clip_stats))  # fmt: skip
        extra = {"distilled_from": [Path(s).name for s in teacher.sources], "student": settings.student}
        if "none_label" in teacher.models[0].info.extra:  # the teacher's "none of these" class is the student's
            extra["none_label"] = teacher.models[0].info.extra["none_label"]
        if model.stats_head is not None:  # fitted after training (train/clipstats.py), not by the optimiser
            model.stats_head.requires_grad_(False)
        model.info = ModelInfo(labels=labels.names, label_ids=labels.mids, contract=contract, extra=extra)
        model.to(device)
        net, optimizer, scheduler, scaler, amp_dtype = cls._optimiser(cfg, device, ctx, model)
        run = cls(cfg, device, ctx, exp, contract, data, {"train": clips, "valid": valid}, val_set, loader, model, net,
                  optimizer, scheduler, scaler, amp_dtype, RunState(), (0, 0), settings, outputs)  # fmt: skip
        run.state = load_resume(exp / "models" / RESUME_FILE, cfg, model, optimizer, scheduler, scaler)
        return run

    def train_one_epoch(self, epoch: int) -> float:
        from tqdm.auto import tqdm

        cfg, ctx, device, settings = self.cfg, self.ctx, self.device, self.settings
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen, started = 0, time.time()
        bar = tqdm(self.loader, desc=f"epoch {epoch}", leave=False, disable=_bar_disabled(cfg, ctx))
        for step_in_epoch, batch in enumerate(bar):
            features, labels = self.data.model_input(batch, device)
            teacher = self.outputs.targets(batch["row"], device)
            labelled = batch["labelled"].to(device)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, self.amp_dtype):
                logits = self.net(features)
            loss = distill_loss(logits, teacher, labels, labelled, self.contract.activation, settings.temperature,
                                settings.label_weight)  # fmt: skip
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss = loss.detach()
            loss_sum += loss.double() * len(features)
            seen += len(features)
            self.state.global_step += 1
            if step_in_epoch % 20 == 0:  # one host sync every 20 steps
                self.watch(bar, loss, epoch, seen, started)
        return self.epoch_mean(loss_sum, seen, epoch, "distillation")


def _store(settings: DistillConfig, teacher: Teacher, exp: Path, clips: Datafile, flags: np.ndarray,
           augmentation: Augmentation, rows: int) -> TeacherStore:  # fmt: skip
    """The store of this distillation, with everything its outputs depend on."""
    sources = []
    for source in teacher.sources:
        path = Path(source)
        sources.append([str(path.resolve()), path.stat().st_size] if path.is_file() else [source, None])
    described = {
        "teachers": sources, "clips": clip_digest(clips, flags), "draws": settings.draws_per_clip,
        "seed": settings.train.seed, "augmentation": dataclasses.asdict(augmentation),
        "contract": teacher.contract.to_dict(), "student": settings.student, "temperature": settings.temperature,
        "label_weight": settings.label_weight,
    }  # fmt: skip
    if teacher.transformers_only:  # named only then: a store of whole outputs reads as before
        described["teaching"] = "transformers"
    return TeacherStore(exp / "teacher", described, rows, min(settings.top_k, len(teacher.labels)))


def student_train_config(settings: DistillConfig, teacher: Teacher) -> TrainConfig:
    """The student's training settings: the given ones, with the architecture of the preset and
    the input, labels and loss of the teacher."""
    contract, labels = teacher.contract, teacher.labels
    preset = STUDENTS[settings.student]
    single = contract.activation == "softmax"
    cfg = settings.train
    return dataclasses.replace(
        cfg, data_train=settings.data_train or settings.unlabelled[0], label_csv=str(Path(cfg.exp_dir) / "labels.csv"),
        n_class=len(labels), fstride=16, tstride=16, imagenet_pretrain=False, audioset_pretrain=False,
        dataset_mean=contract.mean, dataset_std=contract.std, audio_length=contract.target_length,
        num_mel_bins=contract.num_mel_bins, resample=contract.resample, loss="CE" if single else "BCE",
        metrics=settings.metrics or ("acc" if single else "mAP"),
        model_size=preset.model_size, depth=preset.depth, pool=preset.pool,
    )  # fmt: skip


def distill(settings: DistillConfig) -> RunState:
    """Distil ``settings.teachers`` into a ``settings.student`` in ``settings.train.exp_dir``
    (run again: resumes the store's fill, then the student's training); returns the final state."""
    settings.check()
    teacher = Teacher([(str(s), load_model(s, device="cpu")) for s in settings.teachers],
                      transformers_only=settings.train.clip_stats)  # fmt: skip
    cfg = student_train_config(settings, teacher)
    settings = dataclasses.replace(settings, train=cfg)
    build = functools.partial(DistillRun.build_with, settings, teacher)
    return train(cfg, command="ast-audio distill", build=build)
