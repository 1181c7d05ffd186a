"""Soak: a training run killed with SIGKILL at random moments, resumed each time, ends exactly
where an uninterrupted run ends, and leaves no temporary files behind (issue 20).

Seeded and bounded: ``KILLS`` kills at delays drawn from ``numpy.random.default_rng(SEED)``
(``AST_AUDIO_SOAK=N`` for N kills). A kill can land anywhere: while the loader decodes,
mid-step, or while ``last.pt``, a checkpoint, ``result.csv`` or a predictions file is being
written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from conftest import ok, run_cli, start_cli
from factories import as_flags, write_toy_dataset
from factories import toy_train_settings as base_args

SEED = 20
KILLS = int(os.environ.get("AST_AUDIO_SOAK", "4"))


def results(exp):
    return np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)


def leftovers(exp):
    """Temporary files of our naming (``.name.pid.random.tmp*`` / ``.part``) anywhere in the run."""
    return [p for p in exp.rglob(".*") if p.is_file() and (".tmp" in p.name or p.name.endswith(".part"))]


@pytest.mark.slow
def test_random_kill9_soak_ends_where_an_uninterrupted_run_ends(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", per_class_train=4, per_class_val=2)
    args = base_args(toy, tmp_path / "reference", n_epochs=4, batch_size=4, depth=1, mixup=0.5, freqm=10, timem=10,
                     save_model=True, wa=True, wa_start=2, wa_end=4)  # fmt: skip
    begin = time.monotonic()
    ok(run_cli("train", *as_flags(args), OMP_NUM_THREADS=1, timeout=300))
    duration = time.monotonic() - begin

    soak = tmp_path / "soak"
    flags = as_flags({**args, "exp_dir": str(soak)})
    rng = np.random.default_rng(SEED)
    killed = 0
    for delay in rng.uniform(0.3, 1.0, KILLS) * duration:  # from start-up to the end of the run
        proc = start_cli("train", *flags, OMP_NUM_THREADS=1)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:  # still running at the drawn moment: kill it there
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
        proc.stderr.close()
    assert killed, "no kill landed before the run finished"
    final = run_cli("train", *flags, OMP_NUM_THREADS=1, timeout=300)
    ok(final)

    np.testing.assert_allclose(results(soak), results(tmp_path / "reference"), rtol=1e-6, atol=1e-7)
    a = torch.load(tmp_path / "reference" / "models" / "last.pt", weights_only=True)
    b = torch.load(soak / "models" / "last.pt", weights_only=True)
    assert b["state"]["global_step"] == a["state"]["global_step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    for name in ("best_audio_model.safetensors", "audio_model_wa.safetensors", "audio_model.4.safetensors"):
        assert (soak / "models" / name).exists()
    assert leftovers(soak) == []
