"""The embedded default: make a dataset, train a tiny AST on the CPU, evaluate, tag files.

Offline and self-contained (``make demo`` / ``ast-audio demo``):

1. ``ast-audio synth --background`` writes ten classes of sounds and the class
   ``background`` (the noise alone) in ESC-50's layout (``OUT/data``); the eleventh class
   is the model's "nothing", so event detection does not fire a sound class on silence;
2. the ESC-50 reader prepares per-fold datafiles (``OUT/prepared``);
3. a tiny AST (192 wide, 2 layers, 16x16 patches, 1 s inputs) trains from scratch on
   folds 1-3, keeping the best model on fold 4;
4. fold 5, never used for training or choosing the model, gives the held-out accuracy
   and a confusion matrix;
5. event thresholds: ``synth --scenes`` writes a few recordings (seed: the demo's seed +
   5003, so never the benchmark's 2026 or 77 for the default seed 0) and
   ``calibrate --scenes`` picks each class's threshold by event F1 on them, stored in the
   model's metadata (``timeline`` and ``listen`` use them);
6. ``AudioTagger`` tags one held-out clip of each class and prints its top three labels.

Re-running reuses the data, the prepared datafiles and the finished training (the
trainer resumes and finds nothing left to do), so it only evaluates and reports again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.fileio import atomic_write
from ..base.plots import plot_confusion
from ..data.datafiles import match_datafile, read_datafile, write_datafile
from ..errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_FOLDS, VALID_FOLD, TEST_FOLD = (1, 2, 3), 4, 5
SCENE_SEED = 5003  # added to the demo's seed for its calibration scenes
SCENE_SECONDS = (30.0, 60.0)
DEMO_CONFIG = Path(__file__).parent / "demo.toml"  # the training settings, shipped as data


@dataclass
class DemoResult:
    accuracy: float  # on the held-out fold
    test_clips: int
    model: Path
    exp_dir: Path
    confusion_png: Path
    tagged: list  # [(path, [(label, probability), ...]), ...]
    event_f1: tuple[float, float] | None = None  # on the calibration scenes: every class at 0.5, calibrated


def _fold_datafile(prepared: Path, folds: tuple[int, ...], out: Path, label_csv: str) -> Path:
    from .esc50 import eval_datafile

    rows = []
    for k in folds:
        df = read_datafile(eval_datafile(prepared, k), label_csv)
        rows += [(e.wav, [df.labels.mids[i] for i in e.labels]) for e in df.entries]
    return write_datafile(out, rows)


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    per_class: int = 200,
    epochs: int | None = None,  # default: demo.toml's n_epochs
    seed: int = 0,
    progress: bool | None = None,
    workers: int | None = None,
    scenes: int = 4,
) -> DemoResult:
    """Run (or finish, or just report) the demo in ``out``; ``scenes`` recordings calibrate
    the event thresholds (0: none)."""
    from ..audio.synth import write_dataset
    from ..checkpoints.load import load_model
    from ..data.dataset import AudioDataset, norm_stats
    from ..features.contract import InputContract
    from ..infer import AudioTagger
    from ..infer.scoring import missing_event_packages
    from ..train.config import load_config_file, resolve_train_config
    from ..train.evaluate import predict_dataset
    from ..train.loop import train
    from .esc50 import prepare

    if scenes and missing_event_packages():  # asked before the minutes of training, not after them
        raise ConfigError(f"the demo's event calibration (scenes={scenes}) needs {' and '.join(missing_event_packages())}: "
                          "pip install 'ast-audio[events]', or run it with scenes=0 (--scenes 0)")  # fmt: skip
    out = Path(out)
    data = out / "data"
    settings = {"per_class": per_class, "seed": seed, "seconds": 1.0, "background": True}
    stamp = data / "synth.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != settings:
        log.info("writing %d synthetic clips to %s", per_class * 11, data)
        write_dataset(data, per_class=per_class, seconds=1.0, seed=seed, background=True)
        atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(settings)))
    prepared = out / "prepared"
    summary = prepare(data, prepared, workers=workers, force=False, progress=progress)
    label_csv = summary["label_csv"]
    splits = {
        name: _fold_datafile(prepared, folds, prepared / f"demo_{name}.json", label_csv)
        for name, folds in (("train", TRAIN_FOLDS), ("valid", (VALID_FOLD,)), ("test", (TEST_FOLD,)))
    }
    shipped = load_config_file(DEMO_CONFIG)
    stats_file = prepared / "demo_stats.json"
    if not stats_file.exists():
        train_df = read_datafile(splits["train"], label_csv)
        mean, std = norm_stats(AudioDataset(train_df, InputContract(target_length=shipped["audio_length"])))
        atomic_write(stats_file, lambda tmp: tmp.write_text(json.dumps({"mean": mean, "std": std})))
    stats = json.loads(stats_file.read_text())

    exp = out / "exp"
    cfg = resolve_train_config(shipped, dict(
        data_train=str(splits["train"]), data_val=str(splits["valid"]), data_eval=str(splits["test"]),
        label_csv=label_csv, n_class=summary["n_class"], exp_dir=str(exp), dataset_mean=stats["mean"],
        dataset_std=stats["std"], seed=seed, progress=progress,
        **({} if epochs is None else {"n_epochs": epochs}),
    ))  # fmt: skip
    train(cfg)

    best = exp / "models" / "best_audio_model.safetensors"
    event_f1 = _calibrate_events(out, best, scenes, seed) if scenes else None
    model = load_model(best)
    test_df = match_datafile(read_datafile(splits["test"], label_csv), model.info.labels, model.info.label_ids,
                             model.config.label_dim, best)  # fmt: skip
    scores = predict_dataset(model, AudioDataset(test_df, model.input_contract)).scores
    truth = test_df.targets().argmax(1)
    guess = scores.argmax(1)
    accuracy = float(np.mean(truth == guess))
    classes = len(test_df.labels)
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (truth, guess), 1)
    confusion = plot_confusion(
        matrix, test_df.labels.names, exp / "confusion.png", f"held-out fold {TEST_FOLD}: accuracy {accuracy:.1%}"
    )
    first_of_class = {}
    for entry in test_df.entries:
        first_of_class.setdefault(entry.labels[0], entry.wav)
    paths = [first_of_class[c] for c in sorted(first_of_class)]
    predictions = AudioTagger(model, device="cpu", precision="fp32").predict(paths, top_k=3)  # the reference's labels
    tagged = [(p.path, p.labels) for p in predictions]
    return DemoResult(accuracy, len(test_df), best, exp, confusion, tagged, event_f1)


def _calibrate_events(out: Path, best: Path, scenes: int, seed: int) -> tuple[float, float]:
    """Event thresholds of the trained model from ``scenes`` fresh recordings, into ``best``
    (done once: a stamp holds the settings, the thresholds and the F1 before and after)."""
    from dataclasses import replace

    from ..audio.synth import write_scenes
    from ..checkpoints.load import load_model, save_checkpoint
    from ..infer import AudioTagger
    from ..infer.scenes import calibrate_on_scenes

    model = load_model(best)
    stamp = out / "exp" / "event_thresholds.json"
    settings = {"scenes": scenes, "seed": seed + SCENE_SEED, "seconds": list(SCENE_SECONDS)}
    if stamp.exists():
        done = json.loads(stamp.read_text())
        if done["settings"] == settings and done["thresholds"] == model.info.thresholds:
            return tuple(done["event_f1"])
    log.info("calibrating event thresholds on %d scenes", scenes)
    folder = write_scenes(out / "scenes", count=scenes, seconds=SCENE_SECONDS, seed=seed + SCENE_SEED)
    calibration = calibrate_on_scenes(AudioTagger(model, device="cpu", batch_size=32, precision="fp32"), folder)
    thresholds = [round(float(t), 6) for t in calibration.thresholds]
    model.info = replace(model.info, contract=model.info.contract.replace(thresholds=thresholds))
    save_checkpoint(model, best)
    record = {"settings": settings, "thresholds": thresholds, "event_f1": [calibration.before, calibration.after]}
    atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return calibration.before, calibration.after
