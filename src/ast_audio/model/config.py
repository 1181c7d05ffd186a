"""The architecture as data: :class:`ASTConfig`, the sizes of the DeiT trunks, the patch grid,
and the bounds every config is checked against before anything is allocated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..base.checks import is_int, is_number
from ..errors import ConfigError

__all__ = ["MAX_CONFIG", "MAX_PATCHES", "PATCH", "POOLS", "SIZES", "ASTConfig", "SizeSpec", "patch_grid", "size_for"]

PATCH = 16
# What the head sees. "cls": the mean of the cls and dist token outputs (AST's, and what every
# published checkpoint and Hugging Face's ASTForAudioClassification use). "mean": the mean of
# the patch token outputs, a summary over the whole spectrogram from the first step, which a
# small model trained from scratch on a few hundred clips learns from faster than from two
# tokens it must first teach to attend (bench/real.py measures both).
POOLS = ("cls", "mean")


@dataclass(frozen=True)
class SizeSpec:
    embed_dim: int
    num_heads: int
    imagenet_grid: int  # side of the square position grid of the DeiT ImageNet weights


SIZES: dict[str, SizeSpec] = {
    "tiny224": SizeSpec(192, 3, 14),
    "small224": SizeSpec(384, 6, 14),
    "base224": SizeSpec(768, 12, 14),
    "base384": SizeSpec(768, 12, 24),
}


# Upper bounds of a config: 65536 frames is 11 minutes at AST's 10 ms shift, four times the
# longest input any published recipe uses; the rest are far above any AST that exists.
MAX_CONFIG = {"input_tdim": 65536, "input_fdim": 4096, "label_dim": 100_000, "depth": 64, "fstride": 4096,
              "tstride": 65536}  # fmt: skip
MAX_PATCHES = 1 << 18  # the position embedding of base384 is then 0.8 GB


def patch_grid(input_fdim: int, input_tdim: int, fstride: int, tstride: int) -> tuple[int, int]:
    """Number of patches along frequency and time: ``(dim - 16) // stride + 1``."""
    return (input_fdim - PATCH) // fstride + 1, (input_tdim - PATCH) // tstride + 1


@dataclass(frozen=True)
class ASTConfig:
    """Everything that fixes the architecture and the input it takes."""

    label_dim: int = 527
    fstride: int = 10
    tstride: int = 10
    input_fdim: int = 128
    input_tdim: int = 1024
    model_size: str = "base384"
    depth: int = 12
    layer_norm_eps: float = 1e-6
    pool: str = "cls"  # what the head sees: see POOLS
    clip_stats: bool = False  # a linear branch over the clip's log-mel statistics (model/clipstats.py)

    def __post_init__(self):
        if self.model_size not in SIZES:
            raise ConfigError(f"unknown model_size {self.model_size!r}; choose one of {', '.join(SIZES)}")
        for name in ("label_dim", "fstride", "tstride", "depth"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("input_fdim", "input_tdim"):
            value = getattr(self, name)
            if not is_int(value) or value < PATCH:
                raise ConfigError(
                    f"{name}={value!r} is shorter than one {PATCH}x{PATCH} patch; it must be an integer >= {PATCH}"
                )
        # Sizes are bounded before anything is allocated: a config asking for more is an error, not
        # an attempt to allocate it (a corrupt max_length would ask for terabytes).
        for name, limit in MAX_CONFIG.items():
            if getattr(self, name) > limit:
                raise ConfigError(f"{name}={getattr(self, name)} is beyond the supported {limit}")
        if self.num_patches > MAX_PATCHES:
            raise ConfigError(f"a {self.grid[0]}x{self.grid[1]} patch grid is beyond the supported {MAX_PATCHES} "
                              "patches (input_tdim/input_fdim too large or strides too small)")  # fmt: skip
        if not isinstance(self.clip_stats, bool):
            raise ConfigError(f"clip_stats must be true or false, got {self.clip_stats!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < 1:
            raise ConfigError(f"layer_norm_eps must be a number in (0, 1), got {self.layer_norm_eps!r}")

    @property
    def size(self) -> SizeSpec:
        return SIZES[self.model_size]

    @property
    def embed_dim(self) -> int:
        return self.size.embed_dim

    @property
    def num_heads(self) -> int:
        return self.size.num_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(f_dim, t_dim)``."""
        return patch_grid(self.input_fdim, self.input_tdim, self.fstride, self.tstride)

    @property
    def num_patches(self) -> int:
        f_dim, t_dim = self.grid
        return f_dim * t_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ASTConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> ASTConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def size_for(embed_dim: int, num_heads: int | None = None) -> str:
    """The ``model_size`` name for a trunk of this width (base384 for 768)."""
    for name in ("tiny224", "small224", "base384"):
        spec = SIZES[name]
        if spec.embed_dim == embed_dim and (num_heads is None or spec.num_heads == num_heads):
            return name
    heads = "" if num_heads is None else f" and {num_heads} heads"
    raise ConfigError(
        f"no AST size has embedding dimension {embed_dim}{heads} "
        f"(known: {', '.join(f'{k} {s.embed_dim}/{s.num_heads}' for k, s in SIZES.items())})"
    )
