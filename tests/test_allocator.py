"""The C allocator setting (ast_audio.allocator): what it leaves alone, and that it keeps
freed tensor memory for reuse, counted in page faults of a real process (a count, not a time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli_env, ok, run_cli

from ast_audio import allocator

# A child that allocates and frees a 64 MiB tensor six times, touching every page, after
# tuning (or not), and prints the minor page faults of the loop and what tune() said.
CHILD = """
import resource, sys, torch
from ast_audio import allocator
said = allocator.tune() if sys.argv[1] == "tune" else "not asked"
for _ in range(2):  # the first ones fault in either case (the heap grows, then settles)
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    x = torch.ones(16 << 20)
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(said)
"""


def _faults(mode: str, **env: object) -> tuple[int, str]:
    run = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
                         env=cli_env(**env))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    count, said = run.stdout.strip().splitlines()
    return int(count), said


@pytest.mark.skipif(allocator.left_alone({}) is not None, reason="the C library is not glibc")
def test_tuned_allocator_reuses_freed_tensors_instead_of_faulting_them_in_again():
    default, _ = _faults("plain")
    tuned, said = _faults("tune")
    pages = (64 << 20) // 4096  # one 64 MiB tensor in 4 KiB pages
    # glibc's default maps a 64 MiB block from the kernel each time (over its 32 MiB ceiling):
    # six tensors, six times their pages faulted in. Tuned, the heap keeps the block: the
    # loop reuses pages already there (seen: none faulted; the bound allows the heap to grow
    # once more, should small allocations between the tensors fragment it).
    assert default >= 5 * pages, default
    assert tuned <= pages + pages // 2, tuned
    assert said.startswith("tuned:")


def test_allocator_is_left_alone_where_asked_or_where_the_user_chose_one():
    assert allocator.left_alone({"AST_AUDIO_MALLOC": "default"}) == "AST_AUDIO_MALLOC=default"
    assert "preloaded" in allocator.left_alone({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert "MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_" in allocator.left_alone({"MALLOC_TRIM_THRESHOLD_": "1", "MALLOC_ARENA_MAX": "2"})
    assert "GLIBC_TUNABLES" in allocator.left_alone({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    # an unrelated preload or tunable is not an allocator
    assert allocator.left_alone({"LD_PRELOAD": "libfaketime.so", "GLIBC_TUNABLES": "glibc.cpu.x86_ibt=0"}) in (
        None, "the C library is not glibc")  # fmt: skip
    faults, said = _faults("tune", AST_AUDIO_MALLOC="default")
    assert said == "left alone: AST_AUDIO_MALLOC=default"


def test_info_reports_the_allocator_setting():
    out = json.loads(ok(run_cli("info", "--device", "cpu")).stdout)
    assert out["runtime"]["allocator"].startswith(("tuned:", "left alone:"))
    out = json.loads(ok(run_cli("info", "--device", "cpu", AST_AUDIO_MALLOC="default")).stdout)
    assert out["runtime"]["allocator"] == "left alone: AST_AUDIO_MALLOC=default"
