"""The opt-in C allocator setting (ast_audio.base.allocator, AST_AUDIO_MALLOC=reuse): off unless
asked, what it leaves alone, and that it keeps freed tensor memory for reuse, counted in
page faults of a real process (a count, not a time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli_env, ok, run_cli

from ast_audio.base import allocator

# A child that calls tune(), then allocates and frees a 64 MiB tensor six times, touching
# every page, and prints the minor page faults of the loop and what tune() said.
CHILD = """
import resource, sys, torch
from ast_audio.base import allocator
said = allocator.tune()
for _ in range(2):  # the first ones fault in either case (the heap grows, then settles)
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    x = torch.ones(16 << 20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(said)
"""


def _faults(setting: str) -> tuple[int, str]:
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                         env=cli_env(AST_AUDIO_MALLOC=setting))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    count, said = run.stdout.strip().splitlines()
    return int(count), said


@pytest.mark.skipif(allocator.left_alone({"AST_AUDIO_MALLOC": "reuse"}) is not None, reason="not glibc")
def test_reuse_keeps_freed_tensors_instead_of_faulting_them_in_again_and_is_off_by_default():
    default, said_default = _faults("")
    tuned, said = _faults("reuse")
    pages = (64 << 20) // 4096  # one 64 MiB tensor in 4 KiB pages
    # glibc's default maps a 64 MiB block from the kernel each time (over its 32 MiB ceiling):
    # six tensors, six times their pages faulted in. Tuned, the heap keeps the block: the
    # loop reuses pages already there (seen: none faulted; the bound allows the heap to grow
    # once more, should small allocations between the tensors fragment it).
    assert default >= 5 * pages, default
    assert tuned <= pages + pages // 2, tuned
    assert said.startswith("reuse:")
    assert said_default == "left alone: glibc's defaults (AST_AUDIO_MALLOC=reuse to keep freed tensor memory)"


def test_reuse_leaves_alone_an_allocator_the_user_chose():
    reuse = {"AST_AUDIO_MALLOC": "reuse"}
    assert allocator.left_alone({}).startswith("glibc's defaults")
    assert allocator.left_alone({"AST_AUDIO_MALLOC": "default"}).startswith("glibc's defaults")
    assert "preloaded" in allocator.left_alone(reuse | {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert "MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_" in allocator.left_alone(
        reuse | {"MALLOC_TRIM_THRESHOLD_": "1", "MALLOC_ARENA_MAX": "2"})  # fmt: skip
    assert "GLIBC_TUNABLES" in allocator.left_alone(reuse | {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    # an unrelated preload or tunable is not an allocator
    assert allocator.left_alone(reuse | {"LD_PRELOAD": "libfaketime.so", "GLIBC_TUNABLES": "glibc.cpu.x86_ibt=0"}) in (
        None, "the C library is not glibc")  # fmt: skip


def test_info_reports_the_allocator_setting():
    out = json.loads(ok(run_cli("info", "--device", "cpu", AST_AUDIO_MALLOC="")).stdout)
    assert out["runtime"]["allocator"].startswith("left alone: glibc's defaults")
    out = json.loads(ok(run_cli("info", "--device", "cpu", AST_AUDIO_MALLOC="reuse")).stdout)
    assert out["runtime"]["allocator"].startswith(("reuse:", "left alone: the C library is not glibc"))
