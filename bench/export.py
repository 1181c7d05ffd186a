"""The waveform-in ONNX file: clips/s in onnxruntime against our PyTorch path and Hugging Face's.

One command (``.venv/bin/python bench/export.py [--quick]``). One model, random base384
weights (strides 10/10, 1024 frames, 527 classes; ``--quick``: tiny224 with two blocks), is
exported with ``export_waveform_onnx`` in float32 (checked against PyTorch within 1e-4 at
export) and int8 (onnxruntime dynamic quantisation of the linear layers). Timed on the
same ten-second 16 kHz wav files, file to probabilities, each path decoding the files
itself:

- the ONNX file, fp32 and int8, run by :mod:`ast_audio_onnx` (soundfile, soxr, onnxruntime:
  no torch), one file per call;
- ours: ``AudioTagger.predict`` on the paths, fp32 (the reference of every agreement column);
- Hugging Face: soundfile + ``ASTFeatureExtractor`` + ``ASTForAudioClassification`` fp32,
  loaded from our weights (``export_hf``);
- in the browser (onnxruntime-web, WASM, headless Chromium): with ``--browser`` (``make
  bench`` passes it) the client-side page tags the same files and its median time per clip
  is measured (:mod:`webpage`); ``--browser-timing JSON`` (``{"clips_per_s": ...,
  "max_abs_diff": ..., "top1": ...}``) fills the row from elsewhere; else it is marked as not
  measured in this run.

onnxruntime gets as many intra-op threads as torch has, so both sides use the same cores.
Then the install footprint: the bytes that onnxruntime, numpy, soundfile and soxr put in
site-packages against torch's, each alone and with the packages it requires.

Writes its section between the ``bench:export`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import BENCHMARKS, machine, publish, timed

import ast_audio_onnx
from ast_audio import AudioTagger
from ast_audio.audio.synth import SAMPLE_RATE, make_clip
from ast_audio.checkpoints import export_hf, load_model
from ast_audio.checkpoints.onnx_waveform import export_waveform_onnx, verify_waveform_export
from ast_audio.model import ASTModel

START, END = "<!-- bench:export:start -->", "<!-- bench:export:end -->"
BROWSER_ROW = "in-browser (onnxruntime-web, WASM, headless Chromium), fp32"
RUNNER_PACKAGES = ("onnxruntime", "numpy", "soundfile", "soxr")  # what ast_audio_onnx imports


def installed_bytes(name: str) -> int:
    """Bytes of the files the distribution ``name`` installed (its RECORD), as they are on disk."""
    total = 0
    for file in metadata.distribution(name).files or []:
        path = Path(file.locate())
        if path.is_file():
            total += path.stat().st_size
    return total


def requirements(name: str) -> set[str]:
    """``name`` and every distribution it requires, transitively (markers for extras left out)."""
    seen, pending = set(), [name]
    while pending:
        current = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if current in seen:
            continue
        try:
            requires = metadata.requires(current) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(current)
        for req in requires:
            if "extra ==" in req:
                continue
            marker = req.split(";", 1)[1] if ";" in req else ""
            if "sys_platform" in marker and "linux" not in marker and "!=" not in marker:
                continue
            pending.append(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])
    return seen


def footprint_rows() -> list[str]:
    """Markdown rows: the runner's four packages and torch, alone and with what they require."""
    runner_alone = sum(installed_bytes(n) for n in RUNNER_PACKAGES)
    runner_all = set().union(*(requirements(n) for n in RUNNER_PACKAGES))
    torch_all = requirements("torch")
    mib = 2**20

    def size(names) -> float:
        return sum(installed_bytes(n) for n in names) / mib

    return [
        "| install | packages | MiB alone | MiB with what they require |",
        "| --- | --- | ---: | ---: |",
        f"| `ast_audio_onnx` runner | {', '.join(RUNNER_PACKAGES)} | {runner_alone / mib:.0f} | "
        f"{size(runner_all):.0f} ({len(runner_all)} distributions) |",
        f"| PyTorch path | torch {torch.__version__} | {installed_bytes('torch') / mib:.0f} | "
        f"{size(torch_all):.0f} ({len(torch_all)} distributions) |",
    ]


def browser_timing(onnx_path: Path, paths: list[str]) -> dict:
    """The page's own time per clip in headless Chromium (:func:`webpage.browser_seconds_per_clip`:
    decode, resample, the model's windows; page load excluded)."""
    import webpage

    return {"clips_per_s": 1.0 / webpage.browser_seconds_per_clip(onnx_path, paths)}


def browser_row(timing: Path | dict | None, hf_rate: float) -> str:
    """The in-browser row: from the page's timing (measured here, or a file) when given, else
    marked as not measured in this run."""
    if timing is None:
        return f"| {BROWSER_ROW} | not measured in this run | - | - | - |"
    got = timing if isinstance(timing, dict) else json.loads(timing.read_text())
    rate = float(got["clips_per_s"])
    top1 = got.get("top1")
    diff = got.get("max_abs_diff")
    return (
        f"| {BROWSER_ROW} | {rate:.3f} | {rate / hf_rate:.2f}x | "
        f"{'-' if top1 is None else f'{top1:.0%}'} | {'-' if diff is None else f'{diff:.1e}'} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny224 with two blocks, two files, one repeat")
    parser.add_argument("--clips", type=int, default=None, help="ten-second files per timing (4; --quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many timings (2; --quick 1)")
    parser.add_argument("--browser-timing", type=Path, default=None,
                        help="JSON of the page's in-browser timing (clips_per_s, max_abs_diff, top1) for its row")  # fmt: skip
    parser.add_argument("--browser", action="store_true",
                        help="also time the page in headless Chromium (needs chromium and `make vendor`)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ast-bench-export-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    """The benchmark, its files in ``work``."""
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    clips = args.clips or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    load_start = os.getloadavg()[0]
    torch.manual_seed(0)
    size = {"model_size": "tiny224", "depth": 2} if args.quick else {}
    model = ASTModel(label_dim=527, imagenet_pretrain=False, verbose=False, **size)
    with torch.no_grad():  # move LayerNorms and biases off their init, as trained weights are
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.info.dataset_mean, model.info.dataset_std = -4.2677393, 4.5689974
    export_hf(model, work / "hf")
    model = load_model(work / "hf")
    hf = ASTForAudioClassification.from_pretrained(work / "hf").eval()
    extractor = ASTFeatureExtractor()
    fp32_path = export_waveform_onnx(model, work / "model.onnx")  # raises above 1e-4 against PyTorch
    int8_path = export_waveform_onnx(model, work / "model-int8.onnx", int8=True)
    export_parity = verify_waveform_export(model, fp32_path)

    rng = np.random.default_rng(0)
    paths = []
    for i in range(clips):
        clip = np.concatenate([make_clip(int(rng.integers(10)), rng, 2.0) for _ in range(5)])  # ten seconds
        path = work / f"clip{i}.wav"
        sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))

    threads = torch.get_num_threads()
    runners = {
        "ONNX fp32, onnxruntime (ast_audio_onnx, no torch)": ast_audio_onnx.load(fp32_path, threads=threads),
        "ONNX int8, onnxruntime (ast_audio_onnx, no torch)": ast_audio_onnx.load(int8_path, threads=threads),
    }
    tagger = AudioTagger(model, device="cpu", batch_size=clips, precision="fp32")

    def hf_probs() -> np.ndarray:
        out = []
        for path in paths:
            audio, rate = sf.read(path, dtype="float32")
            inputs = extractor(audio, sampling_rate=rate, return_tensors="pt")
            with torch.inference_mode():
                out.append(torch.sigmoid(hf(**inputs).logits.float())[0].numpy())
        return np.stack(out)

    def ours() -> np.ndarray:
        return np.stack([p.scores for p in tagger.predict(paths, top_k=1)])

    candidates = [
        ("Hugging Face extractor + model, fp32", hf_probs),
        ("ours, AudioTagger, fp32 (PyTorch)", ours),
        *[(name, lambda r=runner: np.stack([r.scores(p) for p in paths])) for name, runner in runners.items()],
    ]
    reference = ours()
    rows = []
    for name, fn in candidates:
        probs = fn()  # also the warm-up
        seconds = timed(fn, repeats, warm=False)
        agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        rows.append((name, clips / seconds, agree, float(np.abs(probs - reference).max())))
        print(f"{name}: {clips / seconds:.3f} clips/s", flush=True)

    hf_rate = rows[0][1]
    table = ["| path | clips/s | vs HF fp32 | top-1 agreement with our fp32 | max prob diff |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    table += [f"| {n} | {r:.3f} | {r / hf_rate:.2f}x | {a:.0%} | {d:.1e} |" for n, r, a, d in rows]
    timing = browser_timing(fp32_path, paths) if args.browser else args.browser_timing
    table.append(browser_row(timing, hf_rate))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = "tiny224 with two blocks (--quick)" if args.quick else "base384"
    mib = 2**20
    lines = [
        START,
        "## Export: one ONNX file from waveform to scores (`bench/export.py`)",
        "",
        f"{name}, strides 10/10, 1024 frames, 527 classes, random weights. Run {now} on {machine()}; "
        f"onnxruntime {onnxruntime_version()} with {threads} intra-op threads. Load average "
        f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores): "
        f"above the core count, other jobs shared the CPU. {clips} ten-second 16 kHz wav files per timing, "
        f"best of {repeats}, file to probabilities (decoding included). The fp32 file agreed with PyTorch "
        f"within {export_parity.max_abs_diff:.1e} on the export check's {export_parity.clips} clips. File "
        f"sizes: fp32 {fp32_path.stat().st_size / mib:.1f} MiB, int8 {int8_path.stat().st_size / mib:.1f} MiB. "
        "Agreement columns compare with our fp32 probabilities on the same files (random weights: top-1 "
        "is fragile, so agreement is a lower bound).",
        "",
        *table,
        "",
        "Install footprint (bytes the packages put in site-packages, from their RECORD files, on this "
        "machine; the torch wheel here is the CPU build, a CUDA build is several times larger):",
        "",
        *footprint_rows(),
        END,
    ]
    return publish(lines, args, START, END)


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
