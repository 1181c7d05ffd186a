"""A training run: :class:`Run` builds the data, the model and the optimiser once, runs the
epochs (validation after each, the original's files and scores written by rank 0), the
end-of-run evaluations (weight averaging, the best model on valid and eval) and keeps
``models/last.pt`` so that running the same command again resumes after the last
completed epoch and ends exactly where an uninterrupted run would have. :func:`train` is
the entry point; under ``torchrun`` it runs DDP (only rank 0 writes; validation is
gathered from every rank before the metrics). What the run writes keeps the original
``traintest.py``'s files and layouts (``result.csv``, ``wa_result.csv``,
``eval_result.csv``, ``predictions/``).

(Over 400 lines: the epoch loop, the end-of-run evaluations and the run's files read top
to bottom in one class.)
"""


from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..base.distributed import Dist
from ..base.fileio import atomic_write
from ..base.plots import plot_curves
from ..base.runtime import training_amp
from ..checkpoints.load import load_model, save_checkpoint
from ..data.datafiles import Datafile, read_datafile
from ..data.dataset import AudioDataset, SkippedLog
from ..data.labels import LabelTable, read_label_csv
from ..data.shards import ShardSet
from ..data.source import TrainingData, training_data
from ..errors import ConfigError
from ..features.contract import InputContract
from ..features.pipeline import Augmentation
from ..model.ast import ASTModel
from ..model.config import patch_grid
from ..model.info import ModelInfo
from ..model.patchout import draw_patchout
from .clipstats import batches_of, fit_clip_stats
from .config import TrainConfig, contract_of, patchout_drops
from .evaluate import Predictions, predict_dataset
from .metrics import calculate_stats, d_prime
from .resume import RESUME_FILE, RunState, TrainingError, load_resume, save_resume
from .runs import run_device, run_folder
from .step import bucket_length, parameter_groups, train_step

__all__ = ["Run", "RunState", "TrainingError", "run_device", "run_folder", "train"]

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"


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


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run works with, built once by :meth:`Run.build`."""

    cfg: TrainConfig
    device: torch.device
    ctx: Dist
    exp: Path
    contract: InputContract
    data: TrainingData
    datafiles: dict[str, Datafile | ShardSet]  # train (a datafile or shards), valid and (optionally) eval
    val_set: AudioDataset
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

    @property
    def train_set(self) -> torch.utils.data.Dataset:
        return self.data.dataset

    @property
    def sampler(self):
        """What ``set_epoch`` goes to: the epoch sampler, or the shard stream itself."""
        return self.data.sampler or self.data.dataset

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device, ctx: Dist, exp: Path) -> Run:
        labels = read_label_csv(cfg.label_csv)
        if len(labels) != cfg.n_class:
            raise ConfigError(f"--n_class is {cfg.n_class} but {cfg.label_csv} has {len(labels)} labels")
        if cfg.none_label is not None and cfg.none_label not in labels.names:
            raise ConfigError(f"{cfg.label_csv}: none_label {cfg.none_label!r} is not one of its labels")
        contract = contract_of(cfg)
        data, datafiles, val_set, loader = cls._data(cfg, device, ctx, labels, contract)
        model, patchout = cls._model(cfg, device, ctx, labels, contract)
        net, optimizer, scheduler, scaler, amp_dtype = cls._optimiser(cfg, device, ctx, model)
        run = cls(cfg, device, ctx, exp, contract, data, datafiles, val_set, loader, model, net, optimizer, scheduler,
                  scaler, amp_dtype, RunState(), patchout)  # fmt: skip
        run.state = load_resume(exp / "models" / RESUME_FILE, cfg, model, optimizer, scheduler, scaler)
        return run

    @staticmethod
    def _data(cfg: TrainConfig, device: torch.device, ctx: Dist, labels: LabelTable, contract: InputContract):
        """The training data (files or shards), the validation and eval datafiles, the
        validation set and the training loader (a batch per optimiser step: ``grad_accum``
        micro-batches)."""
        fbank_on = cfg.fbank_on if cfg.fbank_on != "auto" else "device" if device.type == "cuda" else "loader"
        augmentation = Augmentation(freqm=cfg.freqm, timem=cfg.timem, mixup=cfg.mixup, noise=cfg.noise)
        data = training_data(cfg.data_train, labels, contract, augmentation, seed=cfg.seed, rank=ctx.rank,
                             world=ctx.world, fbank_on=fbank_on, cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad,
                             balanced=cfg.bal, batch_size=cfg.batch_size * cfg.grad_accum,
                             by_length=cfg.bucket_by_length)  # fmt: skip
        datafiles = {"train": data.source, "valid": read_datafile(cfg.data_val, labels, skip_bad=cfg.skip_bad)}
        if cfg.data_eval:
            datafiles["eval"] = read_datafile(cfg.data_eval, labels, skip_bad=cfg.skip_bad)
        val_set = AudioDataset(datafiles["valid"], contract, fbank_on=fbank_on, cache_dir=cfg.cache_dir)
        loader = data.loader(cfg.batch_size // ctx.world * cfg.grad_accum, cfg.num_workers,
                             pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)  # fmt: skip
        return data, datafiles, val_set, loader

    @staticmethod
    def _model(cfg: TrainConfig, device: torch.device, ctx: Dist, labels: LabelTable, contract: InputContract):
        """The model (seeded, pretrained as asked, carrying the labels and the contract) and
        the patchout drops per step, checked before any work."""
        torch.manual_seed(cfg.seed)
        model = ASTModel(
            label_dim=cfg.n_class, fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=cfg.num_mel_bins,
            input_tdim=cfg.audio_length, imagenet_pretrain=cfg.imagenet_pretrain,
            audioset_pretrain=cfg.audioset_pretrain, model_size=cfg.model_size, verbose=ctx.main, depth=cfg.depth,
            pool=cfg.pool, clip_stats=cfg.clip_stats,
        )  # fmt: skip
        if model.stats_head is not None:  # fitted after training (train/clipstats.py), not by the optimiser
            model.stats_head.requires_grad_(False)
        extra = {"none_label": cfg.none_label} if cfg.none_label is not None else None
        model.info = ModelInfo(labels=labels.names, label_ids=labels.mids, contract=contract, extra=extra)
        patchout = patchout_drops((cfg.patchout_f, cfg.patchout_t), model.config.grid)
        model.to(device)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        return model, patchout

    @staticmethod
    def _optimiser(cfg: TrainConfig, device: torch.device, ctx: Dist, model: ASTModel):
        """The model as trained (DDP, compiled), fused Adam over the parameter groups, the
        original's MultiStepLR, and the mixed precision (autocast dtype and gradient scaler)."""
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
        return net, optimizer, scheduler, scaler, amp_dtype

    # ------------------------------------------------------------- the loop

    def fit(self) -> RunState:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        if ctx.main:
            self._write_run_files()
        for epoch in range(state.epoch + 1, cfg.n_epochs + 1):
            if state.stopped:  # a run that stopped early stays stopped when run again
                break
            begin = time.time()
            self.data.set_epoch(epoch)
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
                save_resume(self.models_dir / RESUME_FILE, self.cfg, self.model, self.optimizer, self.scheduler,
                            self.scaler, state)  # fmt: skip
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
            features, targets = self.data.model_input(batch, device)
            features, options = self.step_input(features, batch["frames"], state.global_step)
            loss = train_step(self.net, features, targets, self.optimizer, self.scaler, loss=cfg.loss,
                              amp_dtype=self.amp_dtype, label_smoothing=cfg.label_smoothing,
                              micro_batch=cfg.batch_size // ctx.world if cfg.grad_accum > 1 else None,
                              forward_kwargs=options)  # fmt: skip
            loss_sum += loss.double() * len(features)
            seen += len(features)
            state.global_step += 1
            if step_in_epoch % 20 == 0:  # one host sync every 20 steps, not every step
                self.watch(bar, loss, epoch, seen, started)
        return self.epoch_mean(loss_sum, seen, epoch, "training")

    def watch(self, bar, loss: torch.Tensor, epoch: int, seen: int, started: float) -> None:
        """Every few steps: a loss that is no longer finite stops the run (it resumes after the
        last completed epoch), else the progress bar shows it and the clips a second."""
        current = float(loss)
        if not math.isfinite(current):
            raise TrainingError(f"loss became {current} at epoch {epoch}, step {self.state.global_step}; lower "
                                "--lr or check the data (the run can resume from the last completed epoch)",
                                self.cfg.exp_dir)  # fmt: skip
        bar.set_postfix(loss=f"{current:.4f}", clips_s=f"{seen * self.ctx.world / (time.time() - started):.1f}")

    def epoch_mean(self, loss_sum: torch.Tensor, seen: int, epoch: int, what: str) -> float:
        """The epoch's mean loss over every process's clips (a non-finite one stops the run)."""
        totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        if self.ctx.enabled:
            dist.all_reduce(totals)
        mean = float(totals[0] / totals[1])
        if not math.isfinite(mean):
            raise TrainingError(f"the {what} loss of epoch {epoch} is {mean}; lower --lr or check the data",
                                self.cfg.exp_dir)  # fmt: skip
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
        if cfg.clip_stats and best_epoch:
            self._fit_clip_stats()
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

    def _fit_clip_stats(self) -> None:
        """The best model's clip-statistics branch, fitted on the training files and mixed on
        validation (:func:`~ast_audio.train.clipstats.fit_clip_stats`); every rank fits the
        same (deterministic) model, rank 0 saves it in place of the best model."""
        path = self.models_dir / "best_audio_model.safetensors"
        best = load_model(path, device=self.device)
        clips = self.datafiles["train"]  # a distillation's unlabelled clips (no labels) have nothing to fit
        labelled = dataclasses.replace(clips, entries=[e for e in clips.entries if e.labels])
        train_set = AudioDataset(labelled, self.contract, fbank_on=self.val_set.fbank_on,
                                 cache_dir=self.cfg.cache_dir, skip_bad=self.cfg.skip_bad)  # fmt: skip
        sizes = {"batch_size": self.cfg.batch_size, "device": self.device, "num_workers": self.cfg.num_workers}
        fit_clip_stats(best, batches_of(train_set, **sizes), batches_of(self.val_set, **sizes),
                       multi_label=self.cfg.loss == "BCE", metric=self.cfg.metrics)  # fmt: skip
        if self.ctx.main:
            save_checkpoint(best, path)
        self.ctx.barrier()

    # ------------------------------------------------------------- files of the run

    def _write_run_files(self) -> None:
        import json

        cfg = self.cfg
        skipped = [f"{df.path}: {line}" for df in self.datafiles.values() for line in df.skipped]
        if skipped:
            self.skipped_log.add(skipped)
            log.warning("left out %d bad datafile entries (listed in %s)", len(skipped),
                        self.exp / "skipped_entries.txt")  # fmt: skip
        text = json.dumps({"config": dataclasses.asdict(cfg), "git_revision": _git_revision()}, indent=2) + "\n"
        atomic_write(self.exp / "config.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log.info("training %s on %d clips, validating on %d; %d processes on %s", self.exp,
                 len(self.datafiles["train"]), len(self.datafiles["valid"]), self.ctx.world, self.device)  # fmt: skip


def train(cfg: TrainConfig, *, command: str = "ast-audio train", build: Callable[..., Run] | None = None) -> RunState:
    """Train (or resume) the run described by ``cfg`` in ``cfg.exp_dir``; returns the final state.
    ``build(cfg, device, ctx, exp)`` makes the run (default :meth:`Run.build`; distillation
    gives its own); ``command`` names the holder of the folder's lock.

    The experiment folder is held for the run (:func:`run_folder`)."""
    cfg.check()
    device, ctx = run_device(cfg.device)
    if ctx.enabled and cfg.batch_size % ctx.world:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world} processes")
    exp = Path(cfg.exp_dir)
    with run_folder(exp, ctx, command, (exp, exp / "models", exp / PREDICTIONS)):
        return (build or Run.build)(cfg, device, ctx, exp).fit()
