"""Model speed: end-to-end tagging and a training step, ours against Hugging Face's AST.

One command (``.venv/bin/python bench/model.py``, also run by ``make bench``). Both
models hold the same random base384 weights (strides 10/10, 1024 frames, 527 classes):
ours is exported with ``export_hf`` and loaded by transformers' ``from_pretrained``, and
their logits are compared before anything is timed.

1. Tagging, file to probabilities, on ten-second 16 kHz wav files: Hugging Face =
   soundfile + ``ASTFeatureExtractor`` + ``ASTForAudioClassification``; ours =
   ``AudioTagger.predict`` on the paths (decode, fbank, model, batched). fp32, and bf16
   autocast for both. The cost of bf16 is measured against our fp32 probabilities:
   top-1 agreement and the largest probability difference.
2. A training step (forward, BCE loss, backward, Adam) on one 1024-frame clip, fp32.

Writes its table between the ``bench:model`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from features import machine, write_section

from ast_audio import AudioTagger, load_model
from ast_audio.checkpoints import export_hf
from ast_audio.model import ASTModel
from ast_audio.synth import SAMPLE_RATE, make_clip

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:model:start -->", "<!-- bench:model:end -->"


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall-clock runs of ``fn`` (after one warm-up run), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - begin)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="ten-second files tagged per timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="ast-bench-"))
    ours = ASTModel(label_dim=527, imagenet_pretrain=False, verbose=False)
    with torch.no_grad():  # move LayerNorms and biases off their init, as trained weights are
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours.info.dataset_mean, ours.info.dataset_std = -4.2677393, 4.5689974
    export_hf(ours, work / "hf")
    hf = ASTForAudioClassification.from_pretrained(work / "hf").eval()
    ours = load_model(work / "hf")
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

    taggers = {False: AudioTagger(ours, device="cpu", batch_size=args.clips),
               True: AudioTagger(ours, device="cpu", batch_size=args.clips, autocast=True)}  # fmt: skip

    def our_probs(autocast: bool) -> np.ndarray:
        return np.stack([p.scores for p in taggers[autocast].predict(paths, top_k=1)])

    reference = our_probs(False)
    parity = float(np.abs(hf_probs(False) - reference).max())
    rows = []
    for name, fn, autocast in [
        ("Hugging Face extractor + model, fp32", hf_probs, False),
        ("Hugging Face extractor + model, bf16 autocast", hf_probs, True),
        ("ours, AudioTagger, fp32", our_probs, False),
        ("ours, AudioTagger, bf16 autocast", our_probs, True),
    ]:
        seconds = timed(lambda fn=fn, autocast=autocast: fn(autocast), args.repeats)
        probs = fn(autocast)
        agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        rows.append((name, args.clips / seconds, agree, float(np.abs(probs - reference).max())))
        print(f"{name}: {args.clips / seconds:.3f} clips/s", flush=True)

    x = torch.randn(1, 1024, 128)
    target = torch.zeros(1, 527)
    target[0, :3] = 1.0

    def step_of(model, logits_of):
        optimizer = torch.optim.Adam(model.parameters(), 1e-5)

        def step():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits_of(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    ours_train = load_model(work / "hf").train()
    hf_train = ASTForAudioClassification.from_pretrained(work / "hf").train()
    step_ours = timed(step_of(ours_train, ours_train), args.repeats)
    step_hf = timed(step_of(hf_train, lambda v: hf_train(input_values=v).logits), args.repeats)
    print(f"training step: ours {step_ours:.2f} s, Hugging Face {step_hf:.2f} s", flush=True)

    hf_rate = rows[0][1]
    table = ["| path | clips/s | vs HF fp32 | top-1 agreement with our fp32 | max prob diff |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    table += [f"| {n} | {r:.3f} | {r / hf_rate:.2f}x | {a:.0%} | {d:.1e} |" for n, r, a, d in rows]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([
        START,
        "## Model: tagging and training step (`bench/model.py`)",
        "",
        f"base384, strides 10/10, 1024 frames, 527 classes, the same random weights in both. Run {now} on "
        f"{machine()}. {args.clips} ten-second 16 kHz wav files per timing, best of {args.repeats}. Max "
        f"probability difference between Hugging Face fp32 and ours fp32 before timing: {parity:.1e}. "
        "Accuracy columns compare with our fp32 probabilities on the same files (random weights: "
        "the top-1 of an untrained model is fragile, so agreement here is a lower bound).",
        "",
        *table,
        "",
        f"Training step (forward, BCE, backward, Adam; one 1024-frame clip, fp32): ours {step_ours:.2f} s, "
        f"Hugging Face {step_hf:.2f} s ({step_hf / step_ours:.2f}x).",
        "",
        "Not measured yet (issue 9): int8 and torch.compile paths, the data pipeline with workers, GPU figures.",
        END,
    ])  # fmt: skip
    print(section)
    if not args.no_write:
        write_section(args.output, section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
