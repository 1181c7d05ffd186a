"""Opt-in (``AST_AUDIO_MALLOC=reuse``): glibc's malloc set to keep freed tensor memory for reuse.

glibc's malloc maps a block over its threshold (128 KiB at first, growing with what is
freed up to 32 MiB) straight from the kernel and unmaps it on free, and gives the top of
its heap back once 128 KiB of it is free. A forward pass allocates its activations anew
each time, so many of them come back as fresh pages that the kernel zero-fills on first
touch: counted on base384 (2-core EPYC), 57,000 page faults per int8 window and 541,000
per fp32 batch of four windows. :func:`tune` asks glibc (``mallopt``) to serve blocks
under 256 MiB from its heap and to keep up to 512 MiB of free heap: 49 and 4 faults, for
about 10% more peak memory (PyTorch's CPU guide gets the same by preloading jemalloc).

Why it is not the default: fewer faults did not make the tagger faster. Three alternating
pairs of processes tagging four ten-second files (base384 int8 on AVX2 kernels, Hugging
Face fp32 alongside) were 0-10% *slower* with it; a bare int8 forward was 14% faster, a
base384 fp32 training step 3% and 19% in two pairs. On a noisy 2-core machine that is no
measured gain where it matters most, so it stays a switch for those who measure their own.

Torch-free, so the command line applies it before anything else; :class:`~ast_audio.AudioTagger`
applies it on a CPU. Even with ``AST_AUDIO_MALLOC=reuse`` it leaves alone an allocator of
the user's own (``LD_PRELOAD`` of jemalloc, tcmalloc or mimalloc), glibc settings in the
environment (``MALLOC_*``, ``GLIBC_TUNABLES``) and a C library other than glibc.
"""

from __future__ import annotations

import functools
import os
import sys

__all__ = ["ENV", "left_alone", "tune"]

# glibc's mallopt parameters (malloc.h) and what tune() sets them to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
SETTINGS = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 512 << 20}
ENV = "AST_AUDIO_MALLOC"  # "reuse": keep freed tensor memory; anything else: glibc's defaults
OWN_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def left_alone(environ) -> str | None:
    """Why the C allocator is not to be tuned here, or None."""
    if environ.get(ENV, "").lower() != "reuse":
        return f"glibc's defaults ({ENV}=reuse to keep freed tensor memory)"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in OWN_ALLOCATORS):
        return f"an allocator of its own is preloaded ({preload})"
    mine = sorted(k for k in environ if k.startswith("MALLOC_"))
    if mine or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return f"malloc is tuned by the environment ({', '.join(mine) or 'GLIBC_TUNABLES'})"
    if not sys.platform.startswith("linux") or not _glibc():
        return "the C library is not glibc"
    return None


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


@functools.cache
def tune() -> str:
    """With ``AST_AUDIO_MALLOC=reuse``, set glibc's malloc for tensors (the module notes), once per
    process; what was done, in words (for ``ast-audio info``). Else, or where :func:`left_alone`
    says why, nothing."""
    why = left_alone(os.environ)
    if why is not None:
        return f"left alone: {why}"
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        done = all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in SETTINGS.items())
    except (OSError, AttributeError) as err:
        return f"left alone: mallopt unavailable ({err})"
    if not done:
        return "left alone: mallopt refused the settings"
    return "reuse: blocks under 256 MiB from the heap, up to 512 MiB of free heap kept"
