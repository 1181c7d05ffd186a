"""Self-supervised pretraining on unlabelled audio (``ast-audio pretrain``): SSAST's
masked patch modelling (:mod:`ast_audio.model.ssast`) on any folders, datafiles, CSVs or
shards (:mod:`ast_audio.data.unlabelled`: labels ignored, random crops of long recordings,
new crops every epoch).

A run is a training run without labels: the same experiment folder (locked, ``log.txt``,
``config.json``), device and ``torchrun`` DDP (:func:`~ast_audio.train.runs.run_device`,
:func:`~ast_audio.train.runs.run_folder`), precision (``--amp``), epoch sampler and progress
bar. It writes, after every epoch (rank 0):

- ``models/pretrained.safetensors``: the pretrained model, an ``ast-audio`` file that
  :func:`~ast_audio.checkpoints.load.load_model` reads as it reads a published SSAST file and
  that ``train --audioset_pretrain`` (recipes: ``audioset_pretrain=...``) takes as its trunk;
- ``models/last.pt``: the resume file (model, heads, optimiser, scheduler, scaler, RNG,
  state): the same command run again continues after the last completed epoch;
- ``pretrain_result.csv`` (epoch, loss, discriminative loss, generative loss, masked-patch
  accuracy, lr, linear-probe accuracy) and ``curves.png``.

With ``probe_train``/``probe_valid`` (small labelled splits) a linear probe on the
mean-pooled embeddings (:mod:`ast_audio.train.probe`) is scored every ``probe_every``
epochs and after the last: whether pretraining helps shows while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..base.checks import is_int, is_number
from ..base.distributed import Dist
from ..base.fileio import atomic_write, save_torch
from ..base.plots import plot_pretraining
from ..base.runtime import autocast, training_amp
from ..checkpoints.load import save_pretrained
from ..data.dataset import EpochSampler, SkippedLog
from ..data.unlabelled import UnlabelledDataset, unlabelled_sources
from ..errors import ConfigError
from ..features.contract import InputContract
from ..model.ast import ASTModel
from ..model.config import PATCH, SIZES, patch_grid
from ..model.info import ModelInfo
from ..model.ssast import MASKINGS, SSAST, draw_masks, mask_count
from .loop import _bar_disabled, _git_revision
from .probe import probe_accuracy, read_labelled
from .resume import RESUME_FILE, TrainingError, read_run_file
from .runs import run_device, run_folder

__all__ = ["CHECKPOINT", "PretrainConfig", "PretrainState", "pretrain"]

log = logging.getLogger(__name__)

CHECKPOINT = "pretrained.safetensors"
RESULT = "pretrain_result.csv"
COLUMNS = ("epoch", "loss", "disc_loss", "gen_loss", "masked_acc", "lr", "probe_acc")
STATS_DRAWS = 256  # crops the normalisation statistics are measured on, when not given

# Settings that may change between a run and its resumption.
_MAY_CHANGE_ON_RESUME = {"n_epochs", "num_workers", "device", "progress", "exp_dir", "fbank_on", "probe_every",
                         "probe_train", "probe_valid", "grad_checkpointing"}  # fmt: skip


@dataclass
class PretrainConfig:
    """Settings of a pretraining run; names and defaults as ``train``'s where they apply."""

    data: list[str] = field(default_factory=list)  # folders, datafiles, CSVs or shard specs
    exp_dir: str = "exp"
    model_size: str = "base384"
    depth: int = 12
    num_mel_bins: int = 128
    audio_length: int = 1024  # frames of each crop (the model's input_tdim)
    masking: str = "cluster"  # cluster | random
    mask_patches: int | None = None  # masked patches per clip; None: SSAST's share (400 of 512)
    lr: float = 1e-4
    batch_size: int = 12
    num_workers: int = 0
    n_epochs: int = 10
    warmup: bool = False  # lr ramps up over the first 1000 steps
    lrscheduler_start: int = 10
    lrscheduler_step: int = 5
    lrscheduler_decay: float = 0.5
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    dataset_mean: float | None = None  # None: measured on the data's crops
    dataset_std: float | None = None
    seed: int = 0
    amp: str = "auto"
    fbank_on: str = "auto"
    device: str | None = None
    progress: bool | None = None
    skip_bad: bool = False
    grad_checkpointing: bool = False
    probe_train: str | None = None  # labelled clips for the linear probe: folder of class folders, CSV, datafile
    probe_valid: str | None = None
    probe_every: int = 1

    def __post_init__(self):
        self.data = [str(p) for p in self.data]
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)

    def check(self) -> None:
        if not self.data:
            raise ConfigError("pretraining needs audio: give one or more folders, datafiles, CSVs or shards")
        if self.model_size not in SIZES:
            raise ConfigError(f"model_size must be one of {', '.join(SIZES)}, got {self.model_size!r}")
        if self.masking not in MASKINGS:
            raise ConfigError(f"masking must be one of {', '.join(MASKINGS)}, got {self.masking!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.fbank_on not in ("auto", "loader", "device"):
            raise ConfigError(f"fbank_on must be auto, loader or device, got {self.fbank_on!r}")
        for name in ("depth", "batch_size", "n_epochs", "probe_every", "lrscheduler_step"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not is_number(self.lr) or not 0 < self.lr <= 10:
            raise ConfigError(f"lr must be in (0, 10], got {self.lr!r}")
        if (self.probe_train is None) != (self.probe_valid is None):
            raise ConfigError("the linear probe needs both --probe-train and --probe-valid")
        if (self.dataset_mean is None) != (self.dataset_std is None):
            raise ConfigError("give both --dataset-mean and --dataset-std, or neither (measured on the data)")
        if self.dataset_std is not None and self.dataset_std <= 0:
            raise ConfigError(f"dataset_std must be positive, got {self.dataset_std!r}")
        if self.num_mel_bins < PATCH or self.audio_length < PATCH:
            raise ConfigError(f"the input must be at least {PATCH} bins x {PATCH} frames")
        grid = patch_grid(self.num_mel_bins, self.audio_length, PATCH, PATCH)
        if self.mask_patches is not None:
            draw_masks(1, grid, self.mask_patches, self.masking)  # the count is checked against the grid
        else:
            mask_count(grid[0] * grid[1])


@dataclass
class PretrainState:
    epoch: int = 0  # last completed epoch
    global_step: int = 0
    rows: list = field(default_factory=list)  # pretrain_result.csv rows so far
    mean: float | None = None  # the normalisation statistics the run uses
    std: float | None = None


def pretrain(cfg: PretrainConfig) -> PretrainState:
    """Pretrain (or resume) the run of ``cfg`` in ``cfg.exp_dir``; returns the final state."""
    cfg.check()
    device, ctx = run_device(cfg.device)
    if ctx.enabled and cfg.batch_size % ctx.world:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world} processes")
    exp = Path(cfg.exp_dir)
    with run_folder(exp, ctx, "ast-audio pretrain", (exp, exp / "models")):
        return Pretraining(cfg, device, ctx, exp).fit()


class Pretraining:
    """One pretraining run: data, model, optimiser and state, built once."""

    def __init__(self, cfg: PretrainConfig, device: torch.device, ctx: Dist, exp: Path):
        self.cfg, self.device, self.ctx, self.exp = cfg, device, ctx, exp
        resume_path = exp / "models" / RESUME_FILE
        saved = _read_resume(resume_path, cfg) if resume_path.exists() else None
        recordings, self.skipped = unlabelled_sources(cfg.data, skip_bad=cfg.skip_bad)
        fbank_on = cfg.fbank_on if cfg.fbank_on != "auto" else "device" if device.type == "cuda" else "loader"
        contract = InputContract(num_mel_bins=cfg.num_mel_bins, target_length=cfg.audio_length)
        if saved is not None:
            mean, std = saved["state"]["mean"], saved["state"]["std"]
        elif cfg.dataset_mean is not None:
            mean, std = cfg.dataset_mean, cfg.dataset_std
        else:
            plain = UnlabelledDataset(recordings, contract.replace(normalize=False), seed=cfg.seed, skip_bad=cfg.skip_bad)
            mean, std = _measure_stats(plain)
            log.info("normalisation statistics of the crops: mean %.4f, std %.4f", mean, std)
        self.contract = contract.replace(mean=mean, std=std)
        self.dataset = UnlabelledDataset(recordings, self.contract, seed=cfg.seed, fbank_on=fbank_on,
                                         skip_bad=cfg.skip_bad)  # fmt: skip
        self.sampler = EpochSampler(len(self.dataset), cfg.seed, ctx.rank, ctx.world)
        self.loader = self.dataset.loader(cfg.batch_size // ctx.world, self.sampler, cfg.num_workers,
                                          pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)  # fmt: skip
        self.probe = None
        if cfg.probe_train is not None:
            self.probe = read_labelled(cfg.probe_train), read_labelled(cfg.probe_valid)

        torch.manual_seed(cfg.seed)
        model = ASTModel(527, PATCH, PATCH, cfg.num_mel_bins, cfg.audio_length, imagenet_pretrain=False,
                         model_size=cfg.model_size, verbose=ctx.main, depth=cfg.depth)  # fmt: skip
        model.mlp_head.requires_grad_(False)  # the classifier takes no part in pretraining
        self.ssast = SSAST(model).to(device)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        self.count = cfg.mask_patches or mask_count(model.config.num_patches)
        params = [p for p in self.ssast.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, list(range(cfg.lrscheduler_start, 1000, cfg.lrscheduler_step)), gamma=cfg.lrscheduler_decay
        )
        self.amp_dtype, use_scaler = training_amp(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.net = self.ssast
        if ctx.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.ssast, device_ids=[device] if device.type == "cuda" else None
            )
        self.state = PretrainState(mean=mean, std=std)
        if saved is not None:
            self.ssast.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["torch_rng"])
            self.state = PretrainState(**saved["state"])
            log.info("resuming %s after epoch %d (step %d)", exp, self.state.epoch, self.state.global_step)

    @property
    def models_dir(self) -> Path:
        return self.exp / "models"

    def fit(self) -> PretrainState:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        if ctx.main:
            self._write_run_files()
        for epoch in range(state.epoch + 1, cfg.n_epochs + 1):
            begin = time.time()
            self.sampler.set_epoch(epoch)
            loss, disc, gen, acc = self.train_one_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            probe = math.nan
            if self.probe is not None and (epoch % cfg.probe_every == 0 or epoch == cfg.n_epochs):
                probe = self.probe_accuracy() if ctx.main else math.nan
            self.scheduler.step()
            state.epoch = epoch
            if ctx.main:
                state.rows.append([epoch, loss, disc, gen, acc, lr, probe])
                self._after_epoch()
                log.info("epoch %d: loss %.4f (disc %.4f, gen %.4f), masked-patch acc %.4f, lr %.3g%s; %.1f s",
                         epoch, loss, disc, gen, acc, lr, "" if math.isnan(probe) else f", probe acc {probe:.4f}",
                         time.time() - begin)  # fmt: skip
            ctx.barrier()
        return state

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float, float]:
        """The epoch's mean loss, discriminative loss, generative loss and masked-patch accuracy."""
        from tqdm.auto import tqdm

        cfg, ctx, state, device = self.cfg, self.ctx, self.state, self.device
        self.net.train()
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, disc, gen, acc (clip-weighted), clips
        log_file = SkippedLog(self.exp / "skipped_entries.txt")
        bar = tqdm(self.loader, desc=f"pretrain epoch {epoch}", leave=False, disable=_bar_disabled(cfg, ctx))
        for step_in_epoch, batch in enumerate(bar):
            log_file.add_clips(batch.pop("skipped", []))
            if "target" not in batch and "bad" not in batch:  # every clip unreadable (--skip-bad)
                if ctx.enabled:
                    raise TrainingError(f"every clip of a batch at epoch {epoch} was unreadable", cfg.exp_dir)
                continue
            if cfg.warmup and state.global_step <= 1000 and state.global_step % 50 == 0:
                for group in self.optimizer.param_groups:
                    group["lr"] = state.global_step / 1000 * cfg.lr
            x = self.dataset.model_input(batch, device)
            seed = int(np.random.SeedSequence([cfg.seed, state.global_step, ctx.rank]).generate_state(1)[0])
            masked = draw_masks(len(x), self.ssast.grid, self.count, cfg.masking, torch.Generator().manual_seed(seed))
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, self.amp_dtype):
                out = self.net(x, masked.to(device))
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            values = torch.stack([out.loss, out.disc, out.gen, out.acc]).detach().double()
            sums += torch.cat([values * len(x), values.new_tensor([len(x)])])
            state.global_step += 1
            if step_in_epoch % 20 == 0:
                current = float(out.loss.detach())
                if not math.isfinite(current):
                    raise TrainingError(f"loss became {current} at epoch {epoch}, step {state.global_step}; lower "
                                        "--lr (the run can resume from the last completed epoch)", cfg.exp_dir)  # fmt: skip
                bar.set_postfix(loss=f"{current:.4f}", acc=f"{float(out.acc):.3f}")
        if ctx.enabled:
            dist.all_reduce(sums)
        if sums[4] == 0:
            raise TrainingError(f"no clip of epoch {epoch} could be read", cfg.exp_dir)
        means = (sums[:4] / sums[4]).tolist()
        if not all(math.isfinite(v) for v in means):
            raise TrainingError(f"the pretraining loss of epoch {epoch} is {means[0]}; lower --lr", cfg.exp_dir)
        return means[0], means[1], means[2], means[3]

    def probe_accuracy(self) -> float:
        train, valid = self.probe
        return probe_accuracy(self.ssast.model, train, valid, self.contract, device=self.device,
                              batch_size=self.cfg.batch_size, amp_dtype=self.amp_dtype)  # fmt: skip

    # ------------------------------------------------------------- files of the run

    def _after_epoch(self) -> None:
        cfg, state, model = self.cfg, self.state, self.ssast.model
        extra = {"pretraining": "ssast", "masking": cfg.masking, "masked_patches": self.count, "epochs": state.epoch,
                 "clips": len(self.dataset)}  # fmt: skip
        model.info = ModelInfo(contract=self.contract, extra=extra)
        save_pretrained(self.ssast, self.models_dir / CHECKPOINT)
        save_torch({
            "format": "ast-audio-pretrain-run", "config": dataclasses.asdict(cfg), "model": self.ssast.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "state": dataclasses.asdict(state),
        }, self.models_dir / RESUME_FILE)  # fmt: skip
        header = ",".join(COLUMNS)
        table = np.asarray(state.rows, dtype=np.float64)
        atomic_write(self.exp / RESULT,
                     lambda tmp: np.savetxt(tmp, table, delimiter=",", header=header, comments="", fmt="%.6g"))  # fmt: skip
        plot_pretraining(state.rows, self.exp / "curves.png")

    def _write_run_files(self) -> None:
        cfg = self.cfg
        if self.skipped:
            SkippedLog(self.exp / "skipped_entries.txt").add(self.skipped)
            log.warning("left out %d unreadable files (listed in %s)", len(self.skipped), self.exp / "skipped_entries.txt")
        text = json.dumps({"config": dataclasses.asdict(cfg), "git_revision": _git_revision(),
                           "statistics": {"mean": self.contract.mean, "std": self.contract.std}}, indent=2) + "\n"  # fmt: skip
        atomic_write(self.exp / "config.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log.info("pretraining %s on %d crops of %d recordings, %d of %d patches masked (%s); %d processes on %s",
                 self.exp, len(self.dataset), len(self.dataset.recordings), self.count,
                 self.ssast.model.config.num_patches, cfg.masking, self.ctx.world, self.device)  # fmt: skip


def _read_resume(path: Path, cfg: PretrainConfig) -> dict:
    """The resume file of a pretraining run with the same settings (else refused)."""

    def normalise(old: dict) -> None:
        old["betas"] = tuple(old["betas"])

    return read_run_file(path, cfg, "ast-audio-pretrain-run", "pretraining run", _MAY_CHANGE_ON_RESUME, normalise)


def _measure_stats(dataset: UnlabelledDataset) -> tuple[float, float]:
    """Mean and standard deviation of the un-normalised filterbanks of the first
    :data:`STATS_DRAWS` crops of epoch 0's order (padding frames included, as training's)."""
    sampler = EpochSampler(len(dataset), dataset.seed)
    draws = list(sampler)[:STATS_DRAWS]
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(draws), 32):
        batch = dataset.collate([dataset[d] for d in draws[start : start + 32]])
        if "target" not in batch and "bad" not in batch:  # unreadable clips only, left out (--skip-bad)
            continue
        x = dataset.model_input(batch, "cpu").double()  # an unreadable clip: DataError naming it
        total, total_sq, count = total + float(x.sum()), total_sq + float((x * x).sum()), count + x.numel()
    if not count:
        raise ConfigError("no readable crop to measure the normalisation statistics on")
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 1e-12)))
