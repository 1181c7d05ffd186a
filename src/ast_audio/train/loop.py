"""Training AST as the original recipes did, without losing work, on one CPU or many GPUs.

(Over 400 lines: one :class:`Run` keeps the epoch loop, the end-of-run evaluations, the
run's files and its resume together, so the whole of a run reads top to bottom here.)

What matches the original (``run.py`` / ``traintest.py``): Adam with weight decay 5e-7
and betas (0.95, 0.999); optional warm-up (first 1000 steps, every 50 steps
``lr = step / 1000 * lr``); MultiStepLR with milestones ``range(start, 1000, step)``
stepped per epoch; BCE or CE; validation after every epoch; ``result.csv`` with the ten
columns ``[main metric, mAUC, avg precision, avg recall, d_prime, train_loss, valid_loss,
cum main metric, cum mAUC, lr]`` (no header, one row per epoch, ``cum`` = the average of
every epoch's predictions so far); the best model by the main metric; weight averaging
of epochs ``wa_start..wa_end`` with ``wa_result.csv``; the best model scored on a
separate eval set in ``eval_result.csv`` (val acc, val mAUC, eval acc, eval mAUC, one
value per line); the validation scores of every epoch in ``predictions/`` (``target.csv``,
``predictions_{epoch}.csv`` of the latest epoch, ``cum_predictions.csv``, and
``predictions_wa.csv``, ``predictions_valid_set.csv``, ``predictions_eval_set.csv`` of the
end-of-run evaluations), in the original's layouts.

What is ours:
- resumable: ``models/last.pt`` (written atomically after every epoch) holds model,
  optimiser, scheduler, scaler, step counter, RNG state, result rows, the ensemble and
  weight-averaging sums; running the same command again continues after the last
  completed epoch and ends exactly where an uninterrupted run would have;
- DDP under ``torchrun``: ``batch_size`` is the global batch, split across processes;
  only rank 0 writes; validation is gathered from every rank before metrics; the
  end-of-run evaluations (averaged model, best model on valid and eval) run on every rank
  too, from the files rank 0 wrote;
- augmentation per draw: the sampler hands each draw's (clip, epoch, position) to the
  dataset, so every draw is augmented afresh and identically for any number of loader
  workers or processes (see :mod:`ast_audio.data.dataset`);
- ``valid_loss`` is computed on the logits (the original applied the loss to sigmoid
  outputs, which made it incomparable with ``train_loss``);
- mixed precision: ``amp='auto'`` is bf16 where the hardware computes it natively (a CPU
  with AMX or AVX512-BF16, a CUDA GPU with bf16), fp16 with a gradient scaler on other CUDA
  GPUs (as the original) and off elsewhere (:func:`ast_audio.base.runtime.training_amp`);
  ``amp='bf16'`` autocasts to bfloat16 on any device;
- a non-finite loss stops the run with an error (the last good epoch stays resumable);
- speed: Adam is the fused implementation (one kernel for all parameters, same update
  rule); ``fbank_on='device'`` (the default on CUDA) has the loader workers only decode
  and the filterbanks computed on the GPU per batch; ``cache_dir`` keeps decoded,
  resampled waveforms so that later epochs skip decoding; ``compile=True`` runs the model
  under ``torch.compile`` (no gain measured on the CPU; meant for GPUs);
- fine-tuning knobs, off by default: gradient accumulation (``grad_accum``: the loader
  batch is ``batch_size x grad_accum``, :func:`train_step` cuts it into micro-batches;
  warm-up and schedules count optimiser steps), activation checkpointing of the blocks,
  frozen layers and layer-wise lr decay (:func:`parameter_groups`, kept and checked by
  resume), early stopping (``patience``/``min_delta``: the run ends as an ended run does and
  says why), CE label smoothing, Adam's weight decay and betas.
"""


from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..base.distributed import Dist, init_distributed
from ..base.fileio import atomic_write, clean_stale_temporaries
from ..base.plots import plot_curves
from ..base.runtime import pick_device, training_amp
from ..checkpoints.load import load_model, save_checkpoint
from ..data.datafiles import Datafile, balanced_weights, read_datafile, read_weights, weight_file_for
from ..data.dataset import AudioDataset, EpochSampler, SkippedLog
from ..data.labels import read_label_csv
from ..data.shards import ShardStream, is_shard_spec, read_shards
from ..errors import AstAudioError, ConfigError
from ..features.contract import InputContract
from ..features.pipeline import Augmentation
from ..model.ast import PATCH, ASTConfig, ASTModel, ModelInfo, draw_patchout, patch_grid, patchout_drops
from .config import TrainConfig
from .evaluate import Predictions, loss_value, predict_dataset
from .metrics import calculate_stats, d_prime

__all__ = ["EpochSampler", "Run", "RunState", "TrainConfig", "TrainingError", "train", "train_step"]

log = logging.getLogger(__name__)

RESUME_FILE = "last.pt"
PREDICTIONS = "predictions"


class TrainingError(AstAudioError):
    """A run that cannot go on (diverged, or an experiment folder that belongs to another run)."""


# Settings that may change between a run and its resumption.
_MAY_CHANGE_ON_RESUME = {
    "n_epochs", "num_workers", "device", "progress", "exp_dir", "wa_end", "fbank_on", "cache_dir", "compile",
    "grad_checkpointing",
}  # fmt: skip


@dataclass
class RunState:
    epoch: int = 0  # last completed epoch (1-based, as the original counts)
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    rows: list = field(default_factory=list)  # result.csv rows so far
    ensemble_sum: torch.Tensor | None = None  # sum of every epoch's validation scores
    wa_sum: dict | None = None
    wa_count: int = 0
    stale_epochs: int = 0  # epochs in a row without a gain of the main metric over min_delta
    stopped: str | None = None  # why the run stopped before n_epochs (early stopping)


# --------------------------------------------------------------------------- helpers


def _write_csv(path: Path, rows) -> None:
    """``np.savetxt(..., delimiter=',')`` as the original wrote its CSVs: a 2-D table row per
    row, a 1-D list one value per line; atomically."""
    table = np.asarray(rows, dtype=np.float64)
    atomic_write(path, lambda tmp: np.savetxt(tmp, table, delimiter=","))


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _bar_disabled(cfg: TrainConfig, ctx: Dist) -> bool | None:
    """tqdm's ``disable``: off on other ranks or when asked, automatic (terminal only) by default."""
    if not ctx.main or cfg.progress is False:
        return True
    return False if cfg.progress else None


def contract_of(cfg: TrainConfig) -> InputContract:
    """The input contract a run trains with (and writes into its checkpoints)."""
    return InputContract(
        num_mel_bins=cfg.num_mel_bins, target_length=cfg.audio_length, mean=cfg.dataset_mean, std=cfg.dataset_std,
        activation="sigmoid" if cfg.loss == "BCE" else "softmax", resample=cfg.resample,
    )  # fmt: skip


def train_step(
    net: Callable[[torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    loss: str = "BCE",
    amp_dtype: torch.dtype | None = None,
    micro_batch: int | None = None,
    label_smoothing: float = 0.0,
    forward_kwargs: dict | None = None,
) -> torch.Tensor:
    """One optimiser step on a batch: forward of ``net`` (a model, or any callable giving
    logits: ``bench/`` passes Hugging Face's) under autocast when ``amp_dtype``, the loss
    on float32 logits, backward through the scaler, step. Returns the detached loss. This
    is the step ``train`` runs and ``bench/`` times.

    ``micro_batch``: gradient accumulation. The batch is cut into chunks of that many clips,
    each chunk's mean loss weighted by its share of the batch and its gradients added up
    (DDP synchronises only the last), then one step: the update of the whole batch, with
    one chunk's activations in memory at a time.

    ``forward_kwargs``: passed to every ``net`` call (the trainer's patchout and the cut
    of a length-bucketed batch: :meth:`ASTModel.forward`'s options)."""
    optimizer.zero_grad(set_to_none=True)
    total = len(features)
    size = micro_batch or total
    starts = range(0, total, size)
    value_sum = torch.zeros((), device=features.device)
    for i, start in enumerate(starts):
        x, y = features[start : start + size], targets[start : start + size]
        last = i == len(starts) - 1
        with contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync():
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(x, **forward_kwargs) if forward_kwargs else net(x)
            value = loss_value(logits.float(), y, loss, label_smoothing)
            if len(starts) > 1:
                value = value * (len(x) / total)
            scaler.scale(value).backward()
        value_sum += value.detach()
    scaler.step(optimizer)
    scaler.update()
    return value_sum


def bucket_length(longest: int, config: ASTConfig) -> int:
    """Frames a length-bucketed batch is cut to: its ``longest`` clip's real frames rounded up
    to whole patch columns (``16 + k * tstride``), at most the model's ``input_tdim``."""
    columns = 1 if longest <= PATCH else -(-(longest - PATCH) // config.tstride) + 1
    return min(PATCH + (columns - 1) * config.tstride, config.input_tdim)


def parameter_groups(model: ASTModel, freeze: int | str | None = None, llrd: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups. ``freeze``: the parameters of layers ``0..N`` of
    :meth:`ASTModel.layer_ids` (the patch embedding, tokens and positions, then the first
    N blocks), or with ``"all"`` every parameter but the head's, get ``requires_grad=False``
    and stay out. ``llrd < 1``: one group per layer, the head's first, layer ``l`` at
    ``lr_scale = llrd ** (depth + 1 - l)``; else one group. Each group names its parameters
    (``names``), which the resume file keeps and checks."""
    ids, top = model.layer_ids(), model.config.depth + 1
    groups: dict[int, list] = {}
    for name, param in model.named_parameters():
        frozen = not name.startswith("mlp_head.") if freeze == "all" else freeze is not None and ids[name] <= freeze
        if frozen:
            param.requires_grad_(False)
        if param.requires_grad:
            groups.setdefault(ids[name] if llrd != 1 else top, []).append((name, param))
    return [{"params": [p for _, p in members], "names": [n for n, _ in members], "lr_scale": llrd ** (top - layer)}
            for layer, members in sorted(groups.items(), reverse=True)]  # fmt: skip


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run works with, built once by :meth:`Run.build`."""

    cfg: TrainConfig
    device: torch.device
    ctx: Dist
    exp: Path
    contract: InputContract
    datafiles: dict[str, Datafile]  # train, valid and (optionally) eval
    train_set: AudioDataset
    val_set: AudioDataset
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    model: ASTModel
    net: torch.nn.Module  # the model as trained: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    state: RunState
    patchout: tuple[int, int] = (0, 0)  # frequency rows and time columns dropped per step (full-length grid)

    @property
    def models_dir(self) -> Path:
        return self.exp / "models"

    @property
    def predictions_dir(self) -> Path:
        return self.exp / PREDICTIONS

    @property
    def skipped_log(self) -> SkippedLog:
        return SkippedLog(self.exp / "skipped_entries.txt")

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device, ctx: Dist, exp: Path) -> Run:
        labels = read_label_csv(cfg.label_csv)
        if len(labels) != cfg.n_class:
            raise ConfigError(f"--n_class is {cfg.n_class} but {cfg.label_csv} has {len(labels)} labels")
        shards = is_shard_spec(cfg.data_train)  # WebDataset shards (ast_audio.data.shards) instead of a datafile
        if cfg.bucket_by_length and shards:
            raise ConfigError("--bucket-by-length needs a datafile: shards stream their clips in a fixed order, "
                              "which cannot be grouped by length")  # fmt: skip
        datafiles = {"train": read_shards(cfg.data_train, labels) if shards else
                     read_datafile(cfg.data_train, labels, skip_bad=cfg.skip_bad),
                     "valid": read_datafile(cfg.data_val, labels, skip_bad=cfg.skip_bad)}  # fmt: skip
        if cfg.data_eval:
            datafiles["eval"] = read_datafile(cfg.data_eval, labels, skip_bad=cfg.skip_bad)
        contract = contract_of(cfg)
        augmentation = Augmentation(freqm=cfg.freqm, timem=cfg.timem, mixup=cfg.mixup, noise=cfg.noise)
        fbank_on = cfg.fbank_on if cfg.fbank_on != "auto" else "device" if device.type == "cuda" else "loader"
        train_set = AudioDataset(datafiles["train"], contract, augmentation, seed=cfg.seed, fbank_on=fbank_on,
                                 cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad)  # fmt: skip
        val_set = AudioDataset(datafiles["valid"], contract, fbank_on=fbank_on, cache_dir=cfg.cache_dir)
        weights = None
        if cfg.bal and not shards:
            weight_file = weight_file_for(cfg.data_train)
            weights = (read_weights(weight_file, len(datafiles["train"])) if weight_file.exists()
                       else balanced_weights(datafiles["train"]))  # fmt: skip
        lengths = train_set.natural_frames() if cfg.bucket_by_length else None
        sampler = EpochSampler(len(train_set), cfg.seed, ctx.rank, ctx.world, weights, lengths=lengths,
                               batch_size=cfg.batch_size * cfg.grad_accum)  # fmt: skip
        if shards:  # a stream that splits, shuffles and balances itself (no sampler, no weight file)
            train_set = sampler = ShardStream(datafiles["train"], contract, augmentation, seed=cfg.seed,
                                              fbank_on=fbank_on, rank=ctx.rank, world=ctx.world, balanced=cfg.bal,
                                              skip_bad=cfg.skip_bad)
        loader = train_set.loader(  # a batch per optimiser step: grad_accum micro-batches
            cfg.batch_size // ctx.world * cfg.grad_accum, sampler, cfg.num_workers, pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )  # fmt: skip

        torch.manual_seed(cfg.seed)
        model = ASTModel(
            label_dim=cfg.n_class, fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=cfg.num_mel_bins,
            input_tdim=cfg.audio_length, imagenet_pretrain=cfg.imagenet_pretrain,
            audioset_pretrain=cfg.audioset_pretrain, model_size=cfg.model_size, verbose=ctx.main, depth=cfg.depth,
        )  # fmt: skip
        model.info = ModelInfo(labels=labels.names, label_ids=labels.mids).with_contract(contract)
        patchout = patchout_drops((cfg.patchout_f, cfg.patchout_t), model.config.grid)  # checked before any work
        model.to(device)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        groups = parameter_groups(model, cfg.freeze, cfg.llrd)
        for group in groups:
            group["lr"] = cfg.lr * group["lr_scale"]
        optimizer = torch.optim.Adam(groups, cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, fused=True)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(range(cfg.lrscheduler_start, 1000, cfg.lrscheduler_step)), gamma=cfg.lrscheduler_decay
        )
        amp_dtype, use_scaler = training_amp(cfg.amp, device)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        net = model
        if ctx.enabled:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
        run = cls(cfg, device, ctx, exp, contract, datafiles, train_set, val_set, sampler, loader, model, net,
                  optimizer, scheduler, scaler, amp_dtype, RunState(), patchout)  # fmt: skip
        run.state = run._resume()
        return run

    # ------------------------------------------------------------- the loop

    def fit(self) -> RunState:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        if ctx.main:
            self._write_run_files()
        for epoch in range(state.epoch + 1, cfg.n_epochs + 1):
            if state.stopped:  # a run that stopped early stays stopped when run again
                break
            begin = time.time()
            self.sampler.set_epoch(epoch)
            train_loss = self.train_one_epoch(epoch)
            preds = self.predict(self.model, self.val_set)
            lr = self.optimizer.param_groups[0]["lr"]
            if ctx.main:
                self._after_epoch(preds, train_loss, lr, epoch)
                log.info("epoch %d done in %.1f s", epoch, time.time() - begin)
            self.scheduler.step()
            state.epoch = epoch
            state.stopped = ctx.from_main([state.stopped])[0]
            if ctx.main:
                self._save_resume()
            ctx.barrier()
        if state.stopped:
            log.info("stopped early after epoch %d: %s", state.epoch, state.stopped)
        self.finish()
        ctx.barrier()
        return state

    def train_one_epoch(self, epoch: int) -> float:
        from tqdm.auto import tqdm

        cfg, ctx, state, device = self.cfg, self.ctx, self.state, self.device
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        started = time.time()
        bar = tqdm(self.loader, desc=f"epoch {epoch}", leave=False, disable=_bar_disabled(cfg, ctx))
        for step_in_epoch, batch in enumerate(bar):
            self.skipped_log.add_clips(batch.pop("skipped", []))  # unreadable clips left out (--skip-bad)
            if "target" not in batch and "bad" not in batch:
                if ctx.enabled:  # the other processes would wait for this one's gradients forever
                    raise TrainingError(f"every clip of a batch at epoch {epoch} was unreadable; run "
                                        "`ast-audio check` on the datafile and remove them", cfg.exp_dir)  # fmt: skip
                continue
            if cfg.warmup and state.global_step <= 1000 and state.global_step % 50 == 0:
                for group in self.optimizer.param_groups:
                    group["lr"] = state.global_step / 1000 * cfg.lr * group.get("lr_scale", 1.0)
            features, targets = self.train_set.model_input(batch, device)
            features, options = self.step_input(features, batch["frames"], state.global_step)
            loss = train_step(self.net, features, targets, self.optimizer, self.scaler, loss=cfg.loss,
                              amp_dtype=self.amp_dtype, label_smoothing=cfg.label_smoothing,
                              micro_batch=cfg.batch_size // ctx.world if cfg.grad_accum > 1 else None,
                              forward_kwargs=options)  # fmt: skip
            loss_sum += loss.double() * len(features)
            seen += len(features)
            state.global_step += 1
            if step_in_epoch % 20 == 0:  # one host sync every 20 steps, not every step
                current = float(loss)
                if not math.isfinite(current):
                    raise TrainingError(
                        f"loss became {current} at epoch {epoch}, step {state.global_step}; lower --lr or check the "
                        f"data (the run can resume from the last completed epoch)",
                        cfg.exp_dir,
                    )
                bar.set_postfix(loss=f"{current:.4f}", clips_s=f"{seen * ctx.world / (time.time() - started):.1f}")
        totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)])
        if ctx.enabled:
            dist.all_reduce(totals)
        mean = float(totals[0] / totals[1])
        if not math.isfinite(mean):
            raise TrainingError(f"the training loss of epoch {epoch} is {mean}; lower --lr or check the data",
                                cfg.exp_dir)  # fmt: skip
        return mean

    def step_input(self, features: torch.Tensor, frames: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """A training batch as the model takes it, and the model options of its step: with
        length bucketing the features cut to the batch's longest clip (whole patch columns,
        the grid's first columns: :func:`bucket_length`); with patchout the rows and columns
        kept at this step, drawn from ``(seed, step)`` (the same on every rank and after a
        resume; on a cut batch the columns dropped scale with its grid)."""
        cfg, config = self.cfg, self.model.config
        options: dict = {}
        if cfg.bucket_by_length:
            length = bucket_length(int(frames.max()), config)
            if length < features.shape[1]:
                features = features[:, :length]
                options.update(any_length=True, positions="start")
        drop_f, drop_t = self.patchout
        if drop_f or drop_t:
            grid = patch_grid(config.input_fdim, features.shape[1], config.fstride, config.tstride)
            drop_t = min(round(drop_t * grid[1] / config.grid[1]), grid[1] - 1)
            seed = int(np.random.SeedSequence([cfg.seed, step]).generate_state(1)[0])
            options["patchout"] = draw_patchout(grid, drop_f, drop_t, torch.Generator().manual_seed(seed))
        return features, options

    def predict(self, model: ASTModel, dataset: AudioDataset, batch_size: int | None = None) -> Predictions | None:
        """Scores of ``model`` on ``dataset``; every rank takes part, rank 0 gets them."""
        cfg = self.cfg
        size = batch_size or max(1, cfg.batch_size // self.ctx.world) * 2
        return predict_dataset(model, dataset, batch_size=size, num_workers=cfg.num_workers, device=self.device,
                               loss=cfg.loss, autocast_dtype=self.amp_dtype)  # fmt: skip

    def _after_epoch(self, preds: Predictions, train_loss: float, lr: float, epoch: int) -> None:
        cfg, state = self.cfg, self.state
        targets = self.datafiles["valid"].targets()
        stats = calculate_stats(preds.scores, targets)
        scores = torch.from_numpy(preds.scores).double()
        state.ensemble_sum = scores if state.ensemble_sum is None else state.ensemble_sum + scores
        cumulative = (state.ensemble_sum / epoch).numpy()
        cum = calculate_stats(cumulative, targets)
        self._write_predictions(epoch, preds.scores, cumulative, targets)
        main = stats.main(cfg.metrics)
        row = [main, stats.mAUC, stats.average_precision, stats.average_recall, d_prime(stats.mAUC), train_loss,
               preds.loss, cum.main(cfg.metrics), cum.mAUC, lr]  # fmt: skip
        state.rows.append(row)
        _write_csv(self.exp / "result.csv", state.rows)
        log.info(
            "epoch %d: %s %.4f, mAUC %.4f, d' %.3f, train loss %.4f, valid loss %.4f, cum %s %.4f, lr %.3g",
            epoch, cfg.metrics, main, stats.mAUC, d_prime(stats.mAUC), train_loss, preds.loss, cfg.metrics,
            cum.main(cfg.metrics), lr,
        )  # fmt: skip
        if stats.skipped_classes:
            log.warning("%d classes have no positive (or no negative) clip in the validation set; "
                        "they are left out of mAP/mAUC", stats.skipped_classes)  # fmt: skip
        state.stale_epochs = 0 if main > state.best_metric + cfg.min_delta else state.stale_epochs + 1
        if main > state.best_metric:
            state.best_metric, state.best_epoch = main, epoch
            save_checkpoint(self.model, self.models_dir / "best_audio_model.safetensors")
        if cfg.save_model:
            save_checkpoint(self.model, self.models_dir / f"audio_model.{epoch}.safetensors")
        if cfg.wa and cfg.wa_start <= epoch <= cfg.wa_end:
            weights = {k: v.detach().double().cpu() for k, v in self.model.state_dict().items()}
            state.wa_sum = weights if state.wa_sum is None else {k: state.wa_sum[k] + v for k, v in weights.items()}
            state.wa_count += 1
        if cfg.patience and state.stale_epochs >= cfg.patience and epoch < cfg.n_epochs:
            state.stopped = (f"early stopping: {cfg.metrics} gained no more than {cfg.min_delta:g} on its best in "
                             f"{cfg.patience} epochs (best {state.best_metric:.4f} at epoch {state.best_epoch})")

    def _write_predictions(self, epoch: int, scores: np.ndarray, cumulative: np.ndarray, targets: np.ndarray) -> None:
        """The original's ``predictions/``: the targets once, this epoch's scores (the
        previous epoch's file is removed, as the original did to save space) and the
        checkpoint ensemble's; rows in datafile order, one column per class."""
        folder = self.predictions_dir
        folder.mkdir(exist_ok=True)
        if not (folder / "target.csv").exists():
            _write_csv(folder / "target.csv", targets)
        _write_csv(folder / f"predictions_{epoch}.csv", scores)
        _write_csv(folder / "cum_predictions.csv", cumulative)
        (folder / f"predictions_{epoch - 1}.csv").unlink(missing_ok=True)

    # ------------------------------------------------------------- the end of a run

    def finish(self) -> None:
        """Weight averaging and the best model on valid and eval, on every rank (the
        predictions are gathered from all of them); rank 0 writes the files."""
        cfg, ctx, state = self.cfg, self.ctx, self.state
        best_epoch, wa_count = ctx.from_main([state.best_epoch, state.wa_count])
        if cfg.wa and wa_count:
            path = self.models_dir / "audio_model_wa.safetensors"
            if ctx.main:
                averaged = {k: (v / state.wa_count).to(self.model.state_dict()[k].dtype)
                            for k, v in state.wa_sum.items()}  # fmt: skip
                wa_model = ASTModel.from_config(self.model.config, self.model.info)
                wa_model.load_state_dict(averaged)
                save_checkpoint(wa_model, path)
            ctx.barrier()
            preds = self.predict(load_model(path, device=self.device), self.val_set, cfg.batch_size)
            if ctx.main:
                stats = calculate_stats(preds.scores, self.datafiles["valid"].targets())
                _write_csv(self.predictions_dir / "predictions_wa.csv", preds.scores)
                _write_csv(self.exp / "wa_result.csv", [stats.mAP, stats.mAUC, stats.average_precision,
                                                        stats.average_recall, d_prime(stats.mAUC)])  # fmt: skip
                log.info("weight averaging of %d epochs: %s %.4f, mAUC %.4f", wa_count, cfg.metrics,
                         stats.main(cfg.metrics), stats.mAUC)  # fmt: skip
        if "eval" in self.datafiles and best_epoch:
            best = load_model(self.models_dir / "best_audio_model.safetensors", device=self.device)
            eval_set = AudioDataset(self.datafiles["eval"], self.contract, fbank_on=self.val_set.fbank_on)
            values = []
            for name, dataset in (("valid_set", self.val_set), ("eval_set", eval_set)):
                preds = self.predict(best, dataset, cfg.batch_size)
                if ctx.main:
                    stats = calculate_stats(preds.scores, dataset.datafile.targets())
                    _write_csv(self.predictions_dir / f"predictions_{name}.csv", preds.scores)
                    values += [stats.acc, stats.mAUC]
            if ctx.main:
                _write_csv(self.exp / "eval_result.csv", values)
                log.info("best model (epoch %d): val acc %.4f mAUC %.4f, eval acc %.4f mAUC %.4f", best_epoch,
                         *values)  # fmt: skip
        if ctx.main and state.rows:
            plot_curves(state.rows, self.exp / "curves.png", cfg.metrics)

    # ------------------------------------------------------------- files of the run

    def _write_run_files(self) -> None:
        import json

        cfg = self.cfg
        skipped = [f"{df.path}: {line}" for df in self.datafiles.values() for line in df.skipped]
        if skipped:
            self.skipped_log.add(skipped)
            log.warning("left out %d bad datafile entries (listed in %s)", len(skipped),
                        self.exp / "skipped_entries.txt")  # fmt: skip
        (self.exp / "config.json").write_text(
            json.dumps({"config": dataclasses.asdict(cfg), "git_revision": _git_revision()}, indent=2) + "\n"
        )
        log.info("training %s on %d clips, validating on %d; %d processes on %s", self.exp,
                 len(self.datafiles["train"]), len(self.datafiles["valid"]), self.ctx.world, self.device)  # fmt: skip

    def _save_resume(self) -> None:
        state_dict = {
            "format": "ast-audio-run",
            "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),  # its groups name their parameters (parameter_groups)
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": dataclasses.asdict(self.state),
        }
        atomic_write(self.models_dir / RESUME_FILE, lambda tmp: torch.save(state_dict, tmp))

    def _resume(self) -> RunState:
        cfg, path = self.cfg, self.models_dir / RESUME_FILE
        if not path.exists():
            return RunState()
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable resume file gets the same message
            raise TrainingError(f"cannot read the resume checkpoint ({type(err).__name__}: {err})"[:300], path) from None
        if not isinstance(saved, dict) or saved.get("format") != "ast-audio-run":
            raise TrainingError("not an ast-audio run checkpoint", path)
        new, defaults = dataclasses.asdict(cfg), dataclasses.asdict(TrainConfig())
        old = {**defaults, **saved["config"]}  # a setting added since that run had its default there
        changed = [k for k in new if k not in _MAY_CHANGE_ON_RESUME and old.get(k) != new[k]]
        if changed:
            k = changed[0]
            raise TrainingError(
                f"this experiment folder holds a run with other settings ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                "use another --exp-dir to start a new run",
                cfg.exp_dir,
            )
        self.model.load_state_dict(saved["model"])
        groups = [(g.get("names"), g.get("lr_scale", 1.0)) for g in saved["optimizer"]["param_groups"]]
        if groups[0][0] is not None and groups != [(g["names"], g["lr_scale"]) for g in self.optimizer.param_groups]:
            raise TrainingError("the resume checkpoint's parameter groups (frozen layers, lr decay) differ from this "
                                "run's; use another --exp-dir to start a new run", path)  # fmt: skip
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        state = RunState(**saved["state"])
        log.info("resuming %s after epoch %d (step %d)", cfg.exp_dir, state.epoch, state.global_step)
        return state


def train(cfg: TrainConfig) -> RunState:
    """Train (or resume) the run described by ``cfg`` in ``cfg.exp_dir``; returns the final state."""
    cfg.check()
    device = pick_device(cfg.device)
    ctx = init_distributed(device.type)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if ctx.enabled and cfg.batch_size % ctx.world:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world} processes")
    exp = Path(cfg.exp_dir)
    package_log = logging.getLogger("ast_audio")
    level, handler = package_log.level, None
    if ctx.main:  # the run's log file gets INFO and up, whatever the console shows
        (exp / "models").mkdir(parents=True, exist_ok=True)
        for folder in (exp, exp / "models", exp / PREDICTIONS):  # what a kill -9 mid-write left
            clean_stale_temporaries(folder)
        handler = logging.FileHandler(exp / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package_log.addHandler(handler)
        if package_log.getEffectiveLevel() > logging.INFO:
            package_log.setLevel(logging.INFO)
    try:
        return Run.build(cfg, device, ctx, exp).fit()
    finally:
        package_log.setLevel(level)
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()
