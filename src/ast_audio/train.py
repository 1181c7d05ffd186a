"""Training AST as the original recipes did, without losing work, on one CPU or many GPUs.

What matches the original (``run.py`` / ``traintest.py``): Adam with weight decay 5e-7
and betas (0.95, 0.999); optional warm-up (first 1000 steps, every 50 steps
``lr = step / 1000 * lr``); MultiStepLR with milestones ``range(start, 1000, step)``
stepped per epoch; BCE or CE; validation after every epoch; ``result.csv`` with the ten
columns ``[main metric, mAUC, avg precision, avg recall, d_prime, train_loss, valid_loss,
cum main metric, cum mAUC, lr]`` (no header, one row per epoch, ``cum`` = the average of
every epoch's predictions so far); the best model by the main metric; weight averaging
of epochs ``wa_start..wa_end`` with ``wa_result.csv``; the best model scored on a
separate eval set in ``eval_result.csv`` (val acc, val mAUC, eval acc, eval mAUC).

What is ours:
- resumable: ``models/last.pt`` (written atomically after every epoch) holds model,
  optimiser, scheduler, scaler, step counter, RNG state, result rows, the ensemble and
  weight-averaging sums; running the same command again continues after the last
  completed epoch and ends exactly where an uninterrupted run would have;
- DDP under ``torchrun``: ``batch_size`` is the global batch, split across processes;
  only rank 0 writes; validation is gathered from every rank before metrics;
- ``valid_loss`` is computed on the logits (the original applied the loss to sigmoid
  outputs, which made it incomparable with ``train_loss``);
- mixed precision: ``amp='auto'`` is fp16 with a gradient scaler on CUDA (as the
  original) and off on the CPU; ``amp='bf16'`` autocasts to bfloat16 on any device;
- a non-finite loss stops the run with an error (the last good epoch stays resumable);
- speed: Adam is the fused implementation (one kernel for all parameters, same update
  rule); ``fbank_on='device'`` (the default on CUDA) has the loader workers only decode
  and the filterbanks computed on the GPU per batch; ``cache_dir`` keeps decoded,
  resampled waveforms so that later epochs skip decoding; ``compile=True`` runs the model
  under ``torch.compile`` (no gain measured on the CPU; meant for GPUs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoints import save_checkpoint
from .data import balanced_weights, read_datafile, read_weights, weight_file_for
from .dataset import AudioConf, AudioDataset
from .errors import AstAudioError, ConfigError
from .evaluate import loss_value, predict_dataset
from .fileio import atomic_write
from .labels import read_label_csv
from .metrics import calculate_stats, d_prime
from .model import ASTModel, ModelInfo
from .presets import PRESETS

log = logging.getLogger(__name__)

RESUME_FILE = "last.pt"


class TrainingError(AstAudioError):
    """A run that cannot go on (diverged, or an experiment folder that belongs to another run)."""


@dataclass
class TrainConfig:
    """The original ``run.py`` options (same names), plus ours at the end."""

    data_train: str = ""
    data_val: str = ""
    data_eval: str | None = None
    label_csv: str = ""
    n_class: int = 527
    exp_dir: str = "exp"
    lr: float = 0.001
    batch_size: int = 12
    num_workers: int = 0
    n_epochs: int = 1
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    bal: bool = False
    fstride: int = 10
    tstride: int = 10
    imagenet_pretrain: bool | str = True
    audioset_pretrain: bool | str = False
    dataset_mean: float = PRESETS["audioset"].mean
    dataset_std: float = PRESETS["audioset"].std
    audio_length: int = 1024
    noise: bool = False
    metrics: str = "mAP"
    loss: str = "BCE"
    warmup: bool = False
    lrscheduler_start: int = 2
    lrscheduler_step: int = 1
    lrscheduler_decay: float = 0.5
    wa: bool = False
    wa_start: int = 1
    wa_end: int = 10
    save_model: bool = False
    # ours
    model_size: str = "base384"
    depth: int = 12
    num_mel_bins: int = 128
    seed: int = 0
    amp: str = "auto"  # auto | off | bf16 | fp16
    fbank_on: str = "auto"  # auto (device on CUDA, else loader) | loader | device
    cache_dir: str | None = None  # decoded, resampled waveforms kept here for later epochs
    compile: bool = False  # torch.compile the model
    device: str | None = None
    skip_bad: bool = False
    progress: bool | None = None  # None: a bar only on a terminal

    def check(self) -> None:
        for name in ("data_train", "data_val", "label_csv"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.metrics not in ("mAP", "acc"):
            raise ConfigError(f"metrics must be 'mAP' or 'acc', got {self.metrics!r}")
        if self.loss not in ("BCE", "CE"):
            raise ConfigError(f"loss must be 'BCE' or 'CE', got {self.loss!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.fbank_on not in ("auto", "loader", "device"):
            raise ConfigError(f"fbank_on must be auto, loader or device, got {self.fbank_on!r}")
        if self.n_epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("n_epochs and batch_size must be positive and lr > 0")
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise ConfigError(f"weight averaging needs 1 <= wa_start <= wa_end, got {self.wa_start}..{self.wa_end}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


# Settings that may change between a run and its resumption.
_MAY_CHANGE_ON_RESUME = {
    "n_epochs", "num_workers", "device", "progress", "exp_dir", "wa_end", "fbank_on", "cache_dir", "compile",
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


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_type: str) -> Dist:
    """Join the process group ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or, with weights, drawn with replacement) indices for one epoch, the same
    on every rank for a given (seed, epoch), then split ``rank::world`` (wrapped so every
    rank gets the same number of clips)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, weights: np.ndarray | None = None):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.per_rank = math.ceil(size / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=gen)
        order = order.tolist()
        order += order[: self.per_rank * self.world - len(order)]
        return iter(order[self.rank :: self.world])


# --------------------------------------------------------------------------- helpers


def _write_csv(path: Path, rows: list[list[float]]) -> None:
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    atomic_write(path, lambda tmp: np.savetxt(tmp, table, delimiter=","))


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _autocast(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a gradient scaler)."""
    amp = cfg.amp
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a CUDA device; use amp=bf16 or off on the CPU")
        return torch.float16, True
    return (torch.bfloat16, False) if amp == "bf16" else (None, False)


def _bar_disabled(cfg: TrainConfig, ctx: Dist) -> bool | None:
    """tqdm's ``disable``: off on other ranks or when asked, automatic (terminal only) by default."""
    if not ctx.main or cfg.progress is False:
        return True
    return False if cfg.progress else None


# --------------------------------------------------------------------------- the run


def train(cfg: TrainConfig) -> RunState:
    """Train (or resume) the run described by ``cfg`` in ``cfg.exp_dir``; returns the final state."""
    cfg.check()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = init_distributed(device.type)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if ctx.enabled and cfg.batch_size % ctx.world:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the {ctx.world} processes")
    exp = Path(cfg.exp_dir)
    models_dir = exp / "models"
    package_log = logging.getLogger("ast_audio")
    level, handler = package_log.level, None
    if ctx.main:  # the run's log file gets INFO and up, whatever the console shows
        models_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(exp / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package_log.addHandler(handler)
        if package_log.getEffectiveLevel() > logging.INFO:
            package_log.setLevel(logging.INFO)
    try:
        return _run(cfg, device, ctx, exp, models_dir)
    finally:
        package_log.setLevel(level)
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()


def _run(cfg: TrainConfig, device: torch.device, ctx: Dist, exp: Path, models_dir: Path) -> RunState:
    labels = read_label_csv(cfg.label_csv)
    if len(labels) != cfg.n_class:
        raise ConfigError(f"--n_class is {cfg.n_class} but {cfg.label_csv} has {len(labels)} labels")
    train_df = read_datafile(cfg.data_train, labels, skip_bad=cfg.skip_bad)
    val_df = read_datafile(cfg.data_val, labels, skip_bad=cfg.skip_bad)
    eval_df = read_datafile(cfg.data_eval, labels, skip_bad=cfg.skip_bad) if cfg.data_eval else None
    conf = AudioConf(
        num_mel_bins=cfg.num_mel_bins, target_length=cfg.audio_length, freqm=cfg.freqm, timem=cfg.timem,
        mixup=cfg.mixup, mean=cfg.dataset_mean, std=cfg.dataset_std, noise=cfg.noise,
    )  # fmt: skip
    fbank_on = cfg.fbank_on if cfg.fbank_on != "auto" else "device" if device.type == "cuda" else "loader"
    train_set = AudioDataset(train_df, conf, seed=cfg.seed, fbank_on=fbank_on, cache_dir=cfg.cache_dir)
    val_set = AudioDataset(val_df, conf.for_evaluation(), fbank_on=fbank_on, cache_dir=cfg.cache_dir)
    weights = None
    if cfg.bal:
        weight_file = weight_file_for(cfg.data_train)
        weights = read_weights(weight_file, len(train_df)) if weight_file.exists() else balanced_weights(train_df)
    sampler = EpochSampler(len(train_set), cfg.seed, ctx.rank, ctx.world, weights)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size // ctx.world, sampler=sampler, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip

    torch.manual_seed(cfg.seed)
    model = ASTModel(
        label_dim=cfg.n_class, fstride=cfg.fstride, tstride=cfg.tstride, input_fdim=cfg.num_mel_bins,
        input_tdim=cfg.audio_length, imagenet_pretrain=cfg.imagenet_pretrain, audioset_pretrain=cfg.audioset_pretrain,
        model_size=cfg.model_size, verbose=ctx.main, depth=cfg.depth,
    )  # fmt: skip
    model.info = ModelInfo(
        labels=labels.names, label_ids=labels.mids, dataset_mean=cfg.dataset_mean, dataset_std=cfg.dataset_std,
        multilabel=cfg.loss == "BCE",
    )  # fmt: skip
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, cfg.lr, weight_decay=5e-7, betas=(0.95, 0.999), fused=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(range(cfg.lrscheduler_start, 1000, cfg.lrscheduler_step)), gamma=cfg.lrscheduler_decay
    )
    amp_dtype, use_scaler = _autocast(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    state = _resume(cfg, models_dir, model, optimizer, scheduler, scaler)
    if ctx.main:
        skipped = [f"{df.path}: {line}" for df in (train_df, val_df, eval_df) if df is not None for line in df.skipped]
        if skipped:
            (exp / "skipped_entries.txt").write_text("\n".join(skipped) + "\n")
            log.warning("left out %d bad datafile entries (listed in %s)", len(skipped), exp / "skipped_entries.txt")
        (exp / "config.json").write_text(
            json.dumps({"config": dataclasses.asdict(cfg), "git_revision": _git_revision()}, indent=2) + "\n"
        )
        log.info("training %s on %d clips, validating on %d; %d processes on %s", exp, len(train_df),
                 len(val_df), ctx.world, device)  # fmt: skip
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    val_targets = val_df.targets()

    for epoch in range(state.epoch + 1, cfg.n_epochs + 1):
        begin = time.time()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_loss = _train_one_epoch(cfg, net, loader, optimizer, scaler, amp_dtype, state, device, ctx, epoch)
        preds = predict_dataset(
            model, val_set, batch_size=max(1, cfg.batch_size // ctx.world) * 2, num_workers=cfg.num_workers,
            device=device, loss=cfg.loss, autocast_dtype=amp_dtype,
        )  # fmt: skip
        lr = optimizer.param_groups[0]["lr"]
        if ctx.main:
            _after_epoch(cfg, state, model, preds, val_targets, train_loss, lr, epoch, exp, models_dir)
            log.info("epoch %d done in %.1f s", epoch, time.time() - begin)
        scheduler.step()
        state.epoch = epoch
        if ctx.main:
            _save_resume(models_dir, model, optimizer, scheduler, scaler, state, cfg)
        ctx.barrier()

    if ctx.main:
        _finish(cfg, state, model, val_set, val_targets, eval_df, conf, exp, models_dir, device, amp_dtype)
    ctx.barrier()
    return state


def _train_one_epoch(cfg, net, loader, optimizer, scaler, amp_dtype, state, device, ctx, epoch) -> float:
    from tqdm.auto import tqdm

    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    started = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=_bar_disabled(cfg, ctx))
    for step_in_epoch, batch in enumerate(bar):
        if cfg.warmup and state.global_step <= 1000 and state.global_step % 50 == 0:
            for group in optimizer.param_groups:
                group["lr"] = state.global_step / 1000 * cfg.lr
        features, targets = loader.dataset.model_input(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(features)
        loss = loss_value(logits.float(), targets, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(features)
        seen += len(features)
        state.global_step += 1
        if step_in_epoch % 20 == 0:  # one host sync every 20 steps, not every step
            current = float(loss.detach())
            if not math.isfinite(current):
                raise TrainingError(
                    f"loss became {current} at epoch {epoch}, step {state.global_step}; lower --lr or check the data "
                    f"(the run can resume from the last completed epoch)",
                    cfg.exp_dir,
                )
            bar.set_postfix(loss=f"{current:.4f}", clips_s=f"{seen * ctx.world / (time.time() - started):.1f}")
    totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if ctx.enabled:
        dist.all_reduce(totals)
    mean = float(totals[0] / totals[1])
    if not math.isfinite(mean):
        raise TrainingError(f"the training loss of epoch {epoch} is {mean}; lower --lr or check the data", cfg.exp_dir)
    return mean


def _after_epoch(cfg, state, model, preds, targets, train_loss, lr, epoch, exp, models_dir) -> None:
    stats = calculate_stats(preds.scores, targets)
    scores = torch.from_numpy(preds.scores).double()
    state.ensemble_sum = scores if state.ensemble_sum is None else state.ensemble_sum + scores
    cum = calculate_stats((state.ensemble_sum / epoch).numpy(), targets)
    main = stats.main(cfg.metrics)
    row = [main, stats.mAUC, stats.average_precision, stats.average_recall, d_prime(stats.mAUC), train_loss,
           preds.loss, cum.main(cfg.metrics), cum.mAUC, lr]  # fmt: skip
    state.rows.append(row)
    _write_csv(exp / "result.csv", state.rows)
    log.info(
        "epoch %d: %s %.4f, mAUC %.4f, d' %.3f, train loss %.4f, valid loss %.4f, cum %s %.4f, lr %.3g",
        epoch, cfg.metrics, main, stats.mAUC, d_prime(stats.mAUC), train_loss, preds.loss, cfg.metrics,
        cum.main(cfg.metrics), lr,
    )  # fmt: skip
    if stats.skipped_classes:
        log.warning("%d classes have no positive (or no negative) clip in the validation set; "
                    "they are left out of mAP/mAUC", stats.skipped_classes)  # fmt: skip
    if main > state.best_metric:
        state.best_metric, state.best_epoch = main, epoch
        save_checkpoint(model, models_dir / "best_audio_model.safetensors")
    if cfg.save_model:
        save_checkpoint(model, models_dir / f"audio_model.{epoch}.safetensors")
    if cfg.wa and cfg.wa_start <= epoch <= cfg.wa_end:
        weights = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
        state.wa_sum = weights if state.wa_sum is None else {k: state.wa_sum[k] + v for k, v in weights.items()}
        state.wa_count += 1


def _save_resume(models_dir, model, optimizer, scheduler, scaler, state, cfg) -> None:
    state_dict = {
        "format": "ast-audio-run",
        "config": dataclasses.asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": dataclasses.asdict(state),
    }
    atomic_write(models_dir / RESUME_FILE, lambda tmp: torch.save(state_dict, tmp))


def _resume(cfg, models_dir, model, optimizer, scheduler, scaler) -> RunState:
    path = models_dir / RESUME_FILE
    if not path.exists():
        return RunState()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable resume file gets the same message
        raise TrainingError(f"cannot read the resume checkpoint ({type(err).__name__}: {err})"[:300], path) from None
    if not isinstance(saved, dict) or saved.get("format") != "ast-audio-run":
        raise TrainingError("not an ast-audio run checkpoint", path)
    old, new = saved["config"], dataclasses.asdict(cfg)
    changed = [k for k in new if k not in _MAY_CHANGE_ON_RESUME and old.get(k) != new[k]]
    if changed:
        k = changed[0]
        raise TrainingError(
            f"this experiment folder holds a run with other settings ({k}: {old.get(k)!r} there, {new[k]!r} now); "
            "use another --exp-dir to start a new run",
            cfg.exp_dir,
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    state = RunState(**saved["state"])
    log.info("resuming %s after epoch %d (step %d)", cfg.exp_dir, state.epoch, state.global_step)
    return state


def _finish(cfg, state, model, val_set, val_targets, eval_df, conf, exp, models_dir, device, amp_dtype) -> None:
    from .checkpoints import load_model

    if cfg.wa and state.wa_count:
        averaged = {k: (v / state.wa_count).to(model.state_dict()[k].dtype) for k, v in state.wa_sum.items()}
        wa_model = ASTModel.from_config(model.config, model.info)
        wa_model.load_state_dict(averaged)
        wa_model.to(device)
        save_checkpoint(wa_model, models_dir / "audio_model_wa.safetensors")
        preds = predict_dataset(wa_model, val_set, batch_size=cfg.batch_size, device=device, loss=cfg.loss,
                                autocast_dtype=amp_dtype)  # fmt: skip
        stats = calculate_stats(preds.scores, val_targets)
        _write_csv(exp / "wa_result.csv", [[stats.main(cfg.metrics), stats.mAUC]])
        log.info("weight averaging of %d epochs: %s %.4f, mAUC %.4f", state.wa_count, cfg.metrics,
                 stats.main(cfg.metrics), stats.mAUC)  # fmt: skip
    if eval_df is not None and state.best_epoch:
        best = load_model(models_dir / "best_audio_model.safetensors", device=device)
        rows = []
        for dataset in (val_set, AudioDataset(eval_df, conf.for_evaluation(), fbank_on=val_set.fbank_on)):
            preds = predict_dataset(best, dataset, batch_size=cfg.batch_size, device=device, loss=cfg.loss)
            stats = calculate_stats(preds.scores, dataset.datafile.targets())
            rows += [stats.acc, stats.mAUC]
        _write_csv(exp / "eval_result.csv", [rows])
        log.info("best model (epoch %d): val acc %.4f mAUC %.4f, eval acc %.4f mAUC %.4f", state.best_epoch, *rows)
    plot_curves(state.rows, exp / "curves.png", cfg.metrics)


def plot_curves(rows: list[list[float]], path: Path, metric: str) -> None:
    """Training curves (losses; main metric and its checkpoint ensemble) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    epochs = np.arange(1, len(rows) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, data[:, 5], "o-", label="train loss")
    left.plot(epochs, data[:, 6], "o-", label="valid loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, data[:, 0], "o-", label=metric)
    right.plot(epochs, data[:, 7], "o--", label=f"cum {metric} (checkpoint ensemble)")
    right.plot(epochs, data[:, 1], "o-", label="mAUC")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
