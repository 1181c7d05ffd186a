"""The suite's numeric tolerances per precision, in one place, and what ``"auto"`` means in this run.

A test that compares numbers says which precision it compares in: ``precision="fp32"``
(``--precision fp32``) for exact or near-exact equalities, else the bound below for the
precision its computation ran in. A test that leaves the precision at ``"auto"`` (so that it
follows ``AST_AUDIO_PRECISION`` and the CPU, as users' calls do) asserts only what ``auto``
promises: it is one of the three precisions (:func:`auto_here`), it computes exactly as
that precision asked for by name, and it stays within that precision's bounds here.

The bounds are on probabilities (in [0, 1]) of the suite's tiny models (two blocks), and
each is derived from the arithmetic of its number format:

- **fp32** keeps 24 significant bits: one rounding moves a value by at most 2^-24 of it
  (6e-8). Two computations of one clip that differ only in summation order (a matmul
  blocked differently for another batch size) differ by a few such roundings: 1e-6 is 16
  of them on a probability (measured: at most 1.8e-7, tiny checkpoints, 12 clips, batches of
  1, 3 and 16, on AVX512-BF16 and with oneDNN capped to AVX2).
- **bf16** keeps 8 significant bits: one rounding moves a value by up to 2^-9 of it (2e-3).
  Autocast rounds the inputs of every matmul to bf16 and sums in fp32, so a probability
  moves by a few such roundings from fp32's: 0.02 is ten of them (measured: 2.4e-3 on the
  tiny checkpoints, 4e-3 in ``test_infer_fast``). With its batch-mates a clip's bf16 scores
  move where the kernel rounds sums to bf16 at points that depend on the batch size (Intel
  AMX): at most one rounding of a probability, 2^-9 (measured: 7e-4 on an AMX Xeon; 3e-8
  on AVX512-BF16 and where bf16 is emulated).
- **int8** (dynamic quantisation) maps a tensor onto 255 steps of its absolute maximum: a
  value moves by up to half a step, 1/254 of the tensor's range rather than of the value,
  so more than under bf16: 0.06 (measured: 0.023). An int8 member runs its windows one at
  a time (``infer/state.py``), so a clip's int8 scores do not depend on its batch-mates at all.
"""

from __future__ import annotations

import torch

from ast_audio.base.runtime import auto_precision

PRECISIONS = ("fp32", "bf16", "int8")  # what "auto" can mean

# max |probability - fp32's probability| of the same clip (fp32 itself: summation order only)
FROM_FP32 = {"fp32": 1e-6, "bf16": 0.02, "int8": 0.06}

# max |probability batched with other clips - probability of the clip alone|, one precision
BATCH_MATES = {"fp32": 1e-6, "bf16": 2**-9, "int8": 0.0}


def auto_here() -> str:
    """What ``precision="auto"`` computes in on the CPU in this run: ``AST_AUDIO_PRECISION``
    when it is set, else this CPU's fast path."""
    return auto_precision(torch.device("cpu"))[0]
