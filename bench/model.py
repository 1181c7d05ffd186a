"""Model speed: end-to-end tagging and a training step, ours against Hugging Face's AST.

One command (``.venv/bin/python bench/model.py``, also run by ``make bench``). Both
models hold the same random base384 weights (strides 10/10, 1024 frames, 527 classes):
ours is exported with ``export_hf`` and loaded by transformers' ``from_pretrained``, and
their logits are compared before anything is timed.

1. Tagging, file to probabilities, on ten-second 16 kHz wav files: Hugging Face =
   soundfile + ``ASTFeatureExtractor`` + ``ASTForAudioClassification``; ours =
   ``AudioTagger.predict`` on the paths (decode, fbank, model, batched). fp32 and bf16
   autocast for both; ours also int8 (dynamic quantisation of the linear layers), bf16
   under ``torch.compile`` and ``precision="auto"`` (the tagger's default), with the path
   auto took on this machine and why. Each fast path's cost is measured against our fp32
   probabilities: top-1 agreement and the largest probability difference.
2. A training step (forward, BCE loss, backward, fused Adam) on two 1024-frame clips,
   fp32 and bf16 autocast, both models.
3. With ``--trained CHECKPOINT --trained-data DATAFILE`` (``make bench`` passes the
   model ``make demo`` trains and its held-out fold): the same fast paths on a trained
   model and real clips, where top-1 agreement means something (random weights give
   near-ties), plus each path's accuracy against the labels.

4. Unless ``--no-avx2``: part 1's Hugging Face fp32, our fp32, int8 and auto rows again in
   a child process whose libraries are held to AVX2 kernels (``AVX2_ENV``: ATen's dispatch,
   oneDNN, MKL and fbgemm), which is what they run on a CPU with AVX2 and nothing newer
   (Zen 3, Haswell to Comet Lake). On such a CPU auto takes int8: this is where the issue's
   "2x Hugging Face fp32 without bf16 units" is measured when the machine itself has them.
   It is the code path of an AVX2-only CPU, not its microarchitecture (caches, clocks), so
   the ratios are the figure to read. Then once more with ``AST_AUDIO_MALLOC=reuse`` (freed
   tensor memory kept by glibc's malloc, :mod:`ast_audio.base.allocator`; Hugging Face's rows
   too), which shows what that opt-in setting is worth.

Writes its table between the ``bench:model`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import ALLOCATOR, BENCHMARKS, machine, publish, timed, training_step

from ast_audio import AudioTagger, load_model
from ast_audio.audio.synth import SAMPLE_RATE, make_clip
from ast_audio.base import runtime
from ast_audio.checkpoints import export_hf
from ast_audio.model import ASTModel

START, END = "<!-- bench:model:start -->", "<!-- bench:model:end -->"
# What a CPU with AVX2 and nothing newer runs: every library that picks kernels by the CPU held to AVX2.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="ten-second files tagged per timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trained", type=Path, help="a trained checkpoint for the accuracy check (3)")
    parser.add_argument(
        "--trained-data", type=Path, help="its held-out datafile (labels from the checkpoint)"
    )
    parser.add_argument("--no-avx2", action="store_true", help="skip part 4 (the tagging rows on AVX2 kernels)")
    parser.add_argument("--tagging-only", type=Path, metavar="JSON",
                        help="time part 1's fp32, int8 and auto rows only and write them to JSON (part 4's child)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)

    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    load_start = os.getloadavg()[0]

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="ast-bench-"))
    ours = ASTModel(label_dim=527, imagenet_pretrain=False, verbose=False)
    with torch.no_grad():  # move LayerNorms and biases off their init, as trained weights are
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours.info.dataset_mean, ours.info.dataset_std = -4.2677393, 4.5689974
    export_hf(ours, work / "hf")
    hf = ASTForAudioClassification.from_pretrained(work / "hf").eval()
    ours_loaded = load_model(work / "hf")
    extractor = ASTFeatureExtractor()

    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.clips):
        # ten seconds: a few of the synthetic sounds one after another
        clip = np.concatenate([make_clip(int(rng.integers(10)), rng, 2.0) for _ in range(5)])
        path = work / f"clip{i}.wav"
        sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(path))

    def hf_probs(autocast: bool) -> np.ndarray:
        out = []
        for path in paths:
            audio, rate = sf.read(path, dtype="float32")
            inputs = extractor(audio, sampling_rate=rate, return_tensors="pt")
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out.append(torch.sigmoid(hf(**inputs).logits.float())[0].numpy())
        return np.stack(out)

    def ours(**kw) -> AudioTagger:
        return AudioTagger(ours_model, device="cpu", batch_size=args.clips, **{"precision": "fp32", **kw})

    ours_model = ours_loaded
    auto = ours(precision="auto")
    auto_why = runtime.auto_precision(auto.device)[1]
    print(f"precision auto: {auto.precision} ({auto_why})", flush=True)
    paths_ours = {
        "ours, AudioTagger, fp32": ours(),
        "ours, AudioTagger, int8 dynamic": ours(precision="int8"),
        f"ours, AudioTagger, precision auto (took {auto.precision})": auto,
    } if args.tagging_only else {
        "ours, AudioTagger, fp32": ours(),
        "ours, AudioTagger, bf16 autocast": ours(precision="bf16"),
        "ours, AudioTagger, int8 dynamic": ours(precision="int8"),
        "ours, AudioTagger, fp32 + torch.compile": ours(compile=True),
        "ours, AudioTagger, bf16 + torch.compile": ours(precision="bf16", compile=True),
        f"ours, AudioTagger, precision auto (took {auto.precision})": auto,
    }

    def tagger_probs(tagger: AudioTagger) -> np.ndarray:
        return np.stack([p.scores for p in tagger.predict(paths, top_k=1)])

    reference = tagger_probs(paths_ours["ours, AudioTagger, fp32"])
    parity = float(np.abs(hf_probs(False) - reference).max())
    candidates = [
        ("Hugging Face extractor + model, fp32", lambda: hf_probs(False)),
        *([] if args.tagging_only else [("Hugging Face extractor + model, bf16 autocast", lambda: hf_probs(True))]),
        *[(name, lambda t=tagger: tagger_probs(t)) for name, tagger in paths_ours.items()],
    ]
    rows = []
    compile_seconds = []
    for name, fn in candidates:
        begin = time.perf_counter()
        probs = fn()  # also the warm-up (and, for compile, the compilation)
        if "compile" in name:
            compile_seconds.append(time.perf_counter() - begin)
        seconds = timed(fn, args.repeats, warm=False)
        agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        rows.append((name, args.clips / seconds, agree, float(np.abs(probs - reference).max())))
        print(f"{name}: {args.clips / seconds:.3f} clips/s", flush=True)

    if args.tagging_only:
        args.tagging_only.write_text(json.dumps({
            "rows": rows, "auto": auto.precision, "why": auto_why, "capability": torch.backends.cpu.get_cpu_capability(),
            "load": [load_start, os.getloadavg()[0]], "malloc": ALLOCATOR,
        }))  # fmt: skip
        return 0
    avx2 = [] if args.no_avx2 else [
        *avx2_rows(args, work, {}, "The same tagging on AVX2 kernels only"),
        *avx2_rows(args, work, {"AST_AUDIO_MALLOC": "reuse"},
                   "Again on AVX2 kernels, with `AST_AUDIO_MALLOC=reuse` (freed tensor memory kept, for both models)"),
    ]  # fmt: skip

    x = torch.randn(2, 1024, 128)
    target = torch.zeros(2, 527)
    target[:, :3] = 1.0

    ours_train = load_model(work / "hf").train()
    hf_train = ASTForAudioClassification.from_pretrained(work / "hf").train()
    steps = {}
    for label, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        steps[("Hugging Face", label)] = timed(training_step(hf_train, lambda v: hf_train(input_values=v).logits, x, target, dtype),
                                               args.repeats)  # fmt: skip
        steps[("ours", label)] = timed(training_step(ours_train, ours_train, x, target, dtype), args.repeats)
        print(f"training step {label}: ours {steps[('ours', label)]:.2f} s, "
              f"Hugging Face {steps[('Hugging Face', label)]:.2f} s", flush=True)  # fmt: skip
    compiled = torch.compile(ours_train)
    steps[("ours, torch.compile", "bf16 autocast")] = timed(
        training_step(ours_train, compiled, x, target, torch.bfloat16), args.repeats
    )
    print(
        f"training step, compiled bf16: {steps[('ours, torch.compile', 'bf16 autocast')]:.2f} s", flush=True
    )
    trained = trained_rows(args.trained, args.trained_data) if args.trained else []

    hf_rate = rows[0][1]
    table = ["| path | clips/s | vs HF fp32 | top-1 agreement with our fp32 | max prob diff |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    table += [f"| {n} | {r:.3f} | {r / hf_rate:.2f}x | {a:.0%} | {d:.1e} |" for n, r, a, d in rows]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = f"Load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)"
    lines = [
        START,
        "## Model: tagging and training step (`bench/model.py`)",
        "",
        f"base384, strides 10/10, 1024 frames, 527 classes, the same random weights in both. Run {now} on "
        f"{machine()}. {load}: above the core count means other jobs shared the CPU and every figure is "
        f"slower than on an idle machine, by how much varies row to row. {args.clips} ten-second 16 kHz wav files per timing, best of {args.repeats}. Max "
        f"probability difference between Hugging Face fp32 and ours fp32 before timing: {parity:.1e}. "
        "Accuracy columns compare with our fp32 probabilities on the same files (random weights: "
        "the top-1 of an untrained model is fragile, so agreement here is a lower bound). "
        f"`precision=\"auto\"` took {auto.precision} on this machine: {auto_why} (on a CPU without bf16 "
        "units it takes int8, the int8 row).",
        "",
        *table,
        "",
        f"torch.compile's first call took {' and '.join(f'{c:.0f}' for c in compile_seconds)} s (compiling, "
        "or loading what an earlier run left in torch's compile cache; 10-40 s from scratch on this machine); "
        "the row times later calls.",
        "",
        "Training step (forward, BCE, backward, fused Adam; two 1024-frame clips; the same optimiser for both "
        "models, so the difference is the model):",
        "",
        "| model | precision | s/step | clips/s | vs HF fp32 |",
        "| --- | --- | ---: | ---: | ---: |",
        *[f"| {who} | {label} | {sec:.2f} | {2 / sec:.2f} | {steps[('Hugging Face', 'fp32')] / sec:.2f}x |"
          for (who, label), sec in steps.items()],
        *avx2,
        *trained,
        END,
    ]  # fmt: skip
    return publish(lines, args, START, END)


def avx2_rows(args, work: Path, env: dict[str, str], title: str) -> list[str]:
    """Markdown lines: part 1's fp32, int8 and auto rows in a child process held to AVX2 kernels (and ``env``)."""
    out = work / "avx2.json"
    command = [sys.executable, __file__, "--tagging-only", str(out), "--clips", str(args.clips),
               "--repeats", str(args.repeats), "--no-write"]  # fmt: skip
    print("part 4: the tagging rows again on AVX2 kernels", flush=True)
    subprocess.run(command, env={**os.environ, **AVX2_ENV, **env}, check=True)
    got = json.loads(out.read_text())
    hf_rate = got["rows"][0][1]
    return [
        "",
        f"{title} (a child process with {', '.join(f'{k}={v}' for k, v in AVX2_ENV.items())}; "
        f"torch reported CPU capability {got['capability']}; malloc {got['malloc']}; "
        f"load average {got['load'][0]:.1f} to {got['load'][1]:.1f}): "
        "what a CPU with AVX2 and nothing newer (Zen 3, Haswell to Comet Lake) runs, on this machine's cores. "
        f"`precision=\"auto\"` took {got['auto']} there: {got['why']}.",
        "",
        "| path, AVX2 kernels | clips/s | vs HF fp32 | top-1 agreement with our fp32 | max prob diff |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {n} | {r:.3f} | {r / hf_rate:.2f}x | {a:.0%} | {d:.1e} |" for n, r, a, d in got["rows"]],
    ]


def trained_rows(checkpoint: Path, datafile: Path) -> list[str]:
    """Markdown lines: each fast path on a trained model over a held-out datafile."""
    from ast_audio.data import read_datafile

    model = load_model(checkpoint)
    df = read_datafile(datafile, _labels_of(model))
    paths = [e.wav for e in df.entries]
    truth = df.targets().argmax(1)
    settings = {"fp32": {"precision": "fp32"}, "bf16 autocast": {"precision": "bf16"},
                "int8 dynamic": {"precision": "int8"}, "bf16 + torch.compile": {"precision": "bf16", "compile": True},
                f"auto (took {runtime.auto_precision(torch.device('cpu'))[0]})": {"precision": "auto"}}  # fmt: skip
    probs = {}
    for name, kw in settings.items():
        tagger = AudioTagger(model, device="cpu", batch_size=32, **kw)
        probs[name] = np.stack([p.scores for p in tagger.predict(paths, top_k=1)])
        print(f"trained model, {name}: accuracy {np.mean(probs[name].argmax(1) == truth):.1%}", flush=True)
    ref = probs["fp32"]
    lines = [
        "",
        f"Fast paths on a trained model: `{checkpoint}` ({model.config.model_size}, depth {model.config.depth}, "
        f"{model.config.input_tdim} frames), {len(paths)} held-out clips of `{datafile}`.",
        "",
        "| path | accuracy | top-1 agreement with fp32 | max prob diff |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, p in probs.items():
        lines.append(f"| {name} | {np.mean(p.argmax(1) == truth):.1%} | {np.mean(p.argmax(1) == ref.argmax(1)):.1%} "
                     f"| {np.abs(p - ref).max():.1e} |")  # fmt: skip
    return lines


def _labels_of(model):
    from ast_audio.data.labels import LabelTable

    info = model.info
    return LabelTable(list(info.label_ids), list(info.labels))


if __name__ == "__main__":
    sys.exit(main())
