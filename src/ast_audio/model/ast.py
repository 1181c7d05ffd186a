"""The Audio Spectrogram Transformer (Gong, Chung and Glass, Interspeech 2021).

(Over 400 lines: the config, the blocks, the model and its surgery read top to bottom in
one file, as nanoGPT's and timm's do.)

A DeiT *distilled* ViT over a log-mel spectrogram: 16x16 patches cut with strides
``(fstride, tstride)``, a ``cls`` and a ``dist`` token in front, learned absolute
positions, pre-norm transformer blocks, and a head over the mean of the two tokens.

Parameter names equal the original implementation's (``v.blocks.N.attn.qkv.weight``,
``mlp_head.1.weight``...), so its checkpoints load after stripping ``module.``.

Model surgery is made of methods (timm style): :meth:`ASTModel.set_input_size`
re-grids the position embedding for another length or strides (the rule lives in
:mod:`ast_audio.model.pos_embed`), :meth:`ASTModel.reset_classifier` puts a fresh head on,
:meth:`ASTModel.forward_features` / :meth:`ASTModel.forward_head` give the pooled token
(``pre_logits=True``), and ``any_length=True`` runs inputs shorter than ``input_tdim``
with the position grid cut in the graph (what the ONNX export with a dynamic time axis
traces).

**Pretrained weights, without importing the checkpoint code.** Arrows point down: this
file never imports :mod:`~ast_audio.checkpoints.hub`, :mod:`~ast_audio.checkpoints.layouts` or
:mod:`~ast_audio.checkpoints.load`, not even inside a function. Yet the original constructor
(``ASTModel(..., imagenet_pretrain=True)``) must load weights, and
:meth:`ASTModel.from_pretrained` is the classmethod for loading. Decision: the checkpoint
module, when imported, hands its two loaders to :func:`provide_weights` (``init_trunk``
for the constructor's ``imagenet_pretrain`` / ``audioset_pretrain``, ``load`` for
``from_pretrained``, i.e. ``load_model``). ``ast_audio/__init__.py`` imports
:mod:`ast_audio.checkpoints.load`, and Python runs a package's ``__init__`` before any of its
modules, so ``from ast_audio.model.ast import ASTModel`` finds them in place; a model built
without them (nothing imported the checkpoint code) raises a clear error instead of
silently skipping the weights. A factory in place of the class was rejected: it would
break ``isinstance`` and subclassing of ``ASTModel``.

About 460 lines, over the project's ~400: the config, the blocks, the model and its
surgery are kept in one file so that it reads top to bottom like the paper (nanoGPT's
``model.py``); ``ModelInfo`` stays here because its callers import it from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..features.contract import InputContract
from .pos_embed import NUM_PREFIX_TOKENS, adapt_pos_embed, crop_time

log = logging.getLogger(__name__)

PATCH = 16
Patchout = tuple  # (rows, cols): kept frequency rows and time columns of the patch grid (see draw_patchout)


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

    def __post_init__(self):
        if self.model_size not in SIZES:
            raise ConfigError(f"unknown model_size {self.model_size!r}; choose one of {', '.join(SIZES)}")
        for name in ("label_dim", "fstride", "tstride", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("input_fdim", "input_tdim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < PATCH:
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
        if not isinstance(self.layer_norm_eps, int | float) or not 0 < self.layer_norm_eps < 1:
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


@dataclass
class ModelInfo:
    """What a checkpoint says about its outputs and inputs, beyond the architecture."""

    labels: list[str] | None = None  # display names, in output order
    label_ids: list[str] | None = None  # e.g. AudioSet mids, in output order
    dataset_mean: float | None = None
    dataset_std: float | None = None
    multilabel: bool = True  # sigmoid scores (True) or softmax (False)
    sample_rate: int = 16000
    mono: str = "mean"  # channels -> one: their mean
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    resample: bool = True  # False: features at each file's own sample rate
    thresholds: list[float] | None = None  # per-class event/decision thresholds (ast-audio calibrate)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_contract(self, contract: InputContract) -> ModelInfo:
        """This info with the audio, feature and score settings of ``contract`` (its input
        size belongs to the architecture, :class:`ASTConfig`); the inverse of
        :attr:`ASTModel.input_contract`."""
        return replace(
            self, sample_rate=contract.sample_rate, mono=contract.mono, frame_length=contract.frame_length,
            frame_shift=contract.frame_shift, dataset_mean=contract.mean, dataset_std=contract.std,
            multilabel=contract.activation == "sigmoid", resample=contract.resample,
            thresholds=None if contract.thresholds is None else list(contract.thresholds),
        )  # fmt: skip


def missing_statistics(info: ModelInfo, source: object = None) -> ModelInfo:
    """The one policy for a checkpoint without normalisation statistics: use AudioSet's
    (what every published AST was trained with) and say so once, naming the values."""
    if info.dataset_mean is not None and info.dataset_std is not None:
        return info
    default = InputContract()
    where = f"{source}: " if source is not None else ""
    log.warning(
        "%sthe checkpoint records no normalisation statistics; using AudioSet's (mean %s, std %s). "
        "Pass the statistics it was trained with if they differ", where, default.mean, default.std,
    )  # fmt: skip
    return replace(info, dataset_mean=default.mean, dataset_std=default.std)


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_maps: list | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)
        if attn_maps is None:
            x = F.scaled_dot_product_attention(q, k, v)
        else:  # explicit softmax so the weights can be returned for visualisation
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
            attn_maps.append(attn)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, attn_maps: list | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_maps)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, fstride: int, tstride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=(PATCH, PATCH), stride=(fstride, tstride))


class Backbone(nn.Module):
    """The DeiT trunk, kept under the attribute ``v`` as in the original."""

    def __init__(self, cfg: ASTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 2, dim))
        self.patch_embed = PatchEmbed(dim, cfg.fstride, cfg.tstride)
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.layer_norm_eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)


# --------------------------------------------------------------------------- pretrained weights

# Filled by ast_audio.checkpoints.load when it is imported (see the module notes).
_WEIGHTS: dict[str, Callable] = {}


def provide_weights(*, init_trunk: Callable, load: Callable) -> None:
    """Hand the model its weight loaders: ``init_trunk(model, source, kind)`` initialises the
    trunk in place (``kind`` ``"imagenet"`` or ``"audioset"``), ``load(cls, source, **adapt)``
    builds a whole model from a checkpoint. Called by :mod:`ast_audio.checkpoints.load` on import."""
    _WEIGHTS.update(init_trunk=init_trunk, load=load)


def _weights(name: str) -> Callable:
    if name not in _WEIGHTS:
        raise ConfigError(
            "pretrained weights need the checkpoint code: import ast_audio (or ast_audio.checkpoints.load) first"
        )
    return _WEIGHTS[name]


# --------------------------------------------------------------------------- model


class ASTModel(nn.Module):
    """AST with the original constructor: ``ASTModel(label_dim, fstride, tstride, ...)``.

    ``imagenet_pretrain`` / ``audioset_pretrain`` take ``True`` (the published default
    weights: the DeiT file of ``model_size``, resp. ``audioset_10_10_0.4593``), ``False``,
    a path to a local weights file, or a known checkpoint name. AudioSet weights take
    precedence and need no ImageNet weights. ``depth`` and ``layer_norm_eps`` are extras
    for small test models and for Hugging Face configs. :meth:`from_pretrained` loads a
    whole checkpoint instead (head, labels and statistics included).

    Input ``[batch, time, mel]`` normalised filterbanks; output ``[batch, label_dim]`` logits.
    """

    def __init__(
        self,
        label_dim: int = 527,
        fstride: int = 10,
        tstride: int = 10,
        input_fdim: int = 128,
        input_tdim: int = 1024,
        imagenet_pretrain: bool | str = True,
        audioset_pretrain: bool | str = False,
        model_size: str = "base384",
        verbose: bool = True,
        *,
        depth: int = 12,
        layer_norm_eps: float = 1e-6,
    ):
        super().__init__()
        cfg = ASTConfig(
            label_dim, fstride, tstride, input_fdim, input_tdim, model_size, depth, layer_norm_eps
        )
        self.config = cfg
        self.info = ModelInfo()
        self.grad_checkpointing = False  # see set_grad_checkpointing
        self.v = Backbone(cfg)
        self.mlp_head = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, label_dim))
        self.reset_parameters()

        if audioset_pretrain:
            _weights("init_trunk")(self, audioset_pretrain, "audioset")
        elif imagenet_pretrain:
            _weights("init_trunk")(self, imagenet_pretrain, "imagenet")
        if verbose:
            f_dim, t_dim = cfg.grid
            log.info(
                "AST %s: %d layers, strides %d/%d, %dx%d patches (%d), %d outputs, %.1fM parameters",
                model_size, depth, fstride, tstride, f_dim, t_dim, f_dim * t_dim, label_dim,
                sum(p.numel() for p in self.parameters()) / 1e6,
            )  # fmt: skip

    @classmethod
    def from_config(cls, cfg: ASTConfig, info: ModelInfo | None = None) -> ASTModel:
        """A randomly initialised model (no pretrained weights) for ``cfg``."""
        model = cls(
            cfg.label_dim, cfg.fstride, cfg.tstride, cfg.input_fdim, cfg.input_tdim,
            imagenet_pretrain=False, audioset_pretrain=False, model_size=cfg.model_size, verbose=False,
            depth=cfg.depth, layer_norm_eps=cfg.layer_norm_eps,
        )  # fmt: skip
        if info is not None:
            model.info = info
        return model

    @classmethod
    def from_pretrained(
        cls,
        source,
        *,
        label_dim: int | None = None,
        fstride: int | None = None,
        tstride: int | None = None,
        input_tdim: int | None = None,
        input_fdim: int | None = None,
        device: str | torch.device | None = None,
    ) -> ASTModel:
        """A model in eval mode from any checkpoint: a file, a Hugging Face folder or a published
        name (what :func:`ast_audio.load_model` takes). Arguments that differ from the
        checkpoint's adapt it (re-gridded positions, a fresh head)."""
        return _weights("load")(
            cls, source, label_dim=label_dim, fstride=fstride, tstride=tstride,
            input_tdim=input_tdim, input_fdim=input_fdim, device=device,
        )  # fmt: skip

    def reset_parameters(self) -> None:
        """Initialise as DeiT does (truncated normal 0.02 for tokens and linears)."""
        for name in ("cls_token", "dist_token", "pos_embed"):
            nn.init.trunc_normal_(getattr(self.v, name), std=0.02)
        for module in self.v.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.v.patch_embed.proj.reset_parameters()
        for module in self.mlp_head:
            module.reset_parameters()

    # ----------------------------------------------------------------- surgery

    def reset_classifier(self, label_dim: int) -> None:
        """Replace the classification head by a fresh one with ``label_dim`` outputs (labels forgotten)."""
        dim = self.config.embed_dim
        ref = self.mlp_head[1].weight
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, label_dim)).to(ref.device, ref.dtype)
        self.config = replace(self.config, label_dim=label_dim)
        self.info = replace(self.info, labels=None, label_ids=None)

    @property
    def input_contract(self) -> InputContract:
        """What this model takes: its input size (config) and the audio, features,
        statistics and score activation its checkpoint carries (info). Statistics that no
        one recorded are AudioSet's, with a warning (:func:`missing_statistics`)."""
        cfg, info = self.config, missing_statistics(self.info)
        return InputContract(
            sample_rate=info.sample_rate, mono=info.mono, num_mel_bins=cfg.input_fdim,
            frame_length=info.frame_length, frame_shift=info.frame_shift, target_length=cfg.input_tdim,
            mean=info.dataset_mean, std=info.dataset_std, activation="sigmoid" if info.multilabel else "softmax",
            resample=info.resample, thresholds=None if info.thresholds is None else tuple(info.thresholds),
        )  # fmt: skip

    new_head = reset_classifier  # the name this project used first

    def layer_ids(self) -> dict[str, int]:
        """The layer of every parameter, for freezing and layer-wise lr decay (BEiT's numbering):
        0 the patch embedding, tokens and positions, ``i + 1`` block ``i``, ``depth + 1`` the
        final norm and the head."""
        top = self.config.depth + 1

        def layer(name: str) -> int:
            if name.startswith("v.blocks."):
                return int(name.split(".")[2]) + 1
            return top if name.startswith(("v.norm.", "mlp_head.")) else 0

        return {name: layer(name) for name, _ in self.named_parameters()}

    def set_grad_checkpointing(self, enable: bool = True) -> ASTModel:
        """Recompute each block's activations in the backward pass instead of keeping them
        (less memory, about a third more compute when training; no effect without grad)."""
        self.grad_checkpointing = enable
        return self

    def set_input_size(
        self,
        input_tdim: int | None = None,
        input_fdim: int | None = None,
        fstride: int | None = None,
        tstride: int | None = None,
    ) -> ASTModel:
        """Take another input length, number of bins or strides, in place: the position grid is
        cut or interpolated by AST's rule (:func:`~ast_audio.model.pos_embed.adapt_pos_embed`), the
        patch projection keeps its weights and takes the new strides. Returns ``self``."""
        old = self.config
        new = old.replace(input_tdim=input_tdim, input_fdim=input_fdim, fstride=fstride, tstride=tstride)
        if new == old:
            return self
        v = self.v
        with torch.no_grad():
            pos = adapt_pos_embed(v.pos_embed.detach(), old.grid, new.grid)
        v.pos_embed = nn.Parameter(pos, requires_grad=v.pos_embed.requires_grad)
        v.patch_embed.proj.stride = (new.fstride, new.tstride)
        self.config = new
        return self

    # ----------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor, any_length: bool = False) -> None:
        cfg = self.config
        ok = x.dim() == 3 and x.shape[2] == cfg.input_fdim
        ok = ok and (PATCH <= x.shape[1] <= cfg.input_tdim if any_length else x.shape[1] == cfg.input_tdim)
        if not ok:
            frames = f"{PATCH}..{cfg.input_tdim}" if any_length else cfg.input_tdim
            raise ConfigError(
                f"model input must be [batch, {frames} frames, {cfg.input_fdim} mel bins], got {list(x.shape)}"
            )

    def forward_tokens(
        self,
        x: torch.Tensor,
        attn_maps: list | None = None,
        *,
        any_length: bool = False,
        positions: str = "centre",
        patchout: Patchout | None = None,
    ) -> torch.Tensor:
        """All output tokens after the final norm: ``(B, 2 + f_dim * t_dim, D)``.

        ``any_length=True`` accepts 16..``input_tdim`` frames: the position grid is cut to the
        input's patch columns by AST's rule (:func:`~ast_audio.model.pos_embed.crop_time`), which
        equals the model after ``set_input_size(input_tdim=T)``; ``positions="start"`` takes
        the grid's first columns instead (a short clip sees the positions it has when padded
        to ``input_tdim``: what length-bucketed training needs).

        ``patchout=(rows, cols)``: structured patchout (PaSST). Only the patches of the kept
        frequency ``rows`` and time ``cols`` of the input's patch grid (index tensors or
        lists; ``None`` for all of an axis) go through the blocks, each with its own position
        embedding: ``(B, 2 + len(rows) * len(cols), D)``. See :func:`draw_patchout`.
        """
        if positions not in ("centre", "start"):
            raise ConfigError(f"positions must be 'centre' or 'start', got {positions!r}")
        self._check_input(x, any_length)
        v = self.v
        x = x.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        x = v.patch_embed.proj(x)  # (B, D, f, t)
        f_dim, t_dim = x.shape[-2:]
        pos = crop_time(v.pos_embed, self.config.grid, t_dim, positions) if any_length else v.pos_embed
        x = x.flatten(2).transpose(1, 2)  # (B, f*t, D): frequency rows, time fastest
        B = x.shape[0]
        if patchout is None:
            x = torch.cat(
                [v.cls_token.expand(B, -1, -1), v.dist_token.expand(B, -1, -1), x], dim=1
            )  # (B, 2+N, D)
            x = x + pos
        else:  # keep the chosen rows and columns, each patch with its own position
            D = x.shape[-1]
            keep = _kept_patches(patchout, f_dim, t_dim, x.device)  # (N',) flat indices of the kept patches
            x = x[:, keep] + pos[:, NUM_PREFIX_TOKENS:][:, keep]  # (B, N', D)
            prefix = torch.cat([v.cls_token, v.dist_token], dim=1) + pos[:, :NUM_PREFIX_TOKENS]  # (1, 2, D)
            x = torch.cat([prefix.expand(B, -1, D), x], dim=1)  # (B, 2+N', D)
        for block in v.blocks:
            if self.grad_checkpointing and attn_maps is None and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, attn_maps)
        return v.norm(x)

    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """AST's pooled token: the mean of the ``cls`` and ``dist`` outputs, ``(B, D)``."""
        return (tokens[:, 0] + tokens[:, 1]) / 2

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        any_length: bool = False,
        positions: str = "centre",
        patchout: Patchout | None = None,
    ) -> torch.Tensor:
        """The pooled embedding: mean of the ``cls`` and ``dist`` outputs, ``(B, D)``
        (``any_length``, ``positions``, ``patchout``: see :meth:`forward_tokens`)."""
        return self.pool(self.forward_tokens(x, any_length=any_length, positions=positions, patchout=patchout))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits of pooled ``features``; with ``pre_logits`` the features themselves (timm's convention)."""
        return features if pre_logits else self.mlp_head(features)

    def forward(
        self,
        x: torch.Tensor,
        *,
        any_length: bool = False,
        positions: str = "centre",
        patchout: Patchout | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, label_dim)``; the options are :meth:`forward_tokens`'s (training uses
        them: patchout and length-bucketed batches; evaluation and inference use neither)."""
        return self.forward_head(
            self.forward_features(x, any_length=any_length, positions=positions, patchout=patchout)
        )

    def token_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Patch outputs laid out on the patch grid: ``(B, f_dim, t_dim, D)``."""
        tokens = self.forward_tokens(x)[:, NUM_PREFIX_TOKENS:]
        f_dim, t_dim = self.config.grid
        return tokens.reshape(tokens.shape[0], f_dim, t_dim, tokens.shape[-1])  # (B, f, t, D)

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every layer's attention weights, each ``(B, heads, 2+N, 2+N)``."""
        maps: list[torch.Tensor] = []
        tokens = self.forward_tokens(x, attn_maps=maps)
        return self.forward_head(self.pool(tokens)), maps

    def flops(self) -> int:
        """Multiply-accumulates x2 of one forward pass on one clip (matmuls only)."""
        cfg = self.config
        n, d = cfg.num_patches + 2, cfg.embed_dim
        per_block = 2 * n * d * (3 * d + d + 8 * d) + 2 * 2 * n * n * d
        patch = 2 * cfg.num_patches * d * PATCH * PATCH
        return int(cfg.depth * per_block + patch + 2 * d * cfg.label_dim)


# --------------------------------------------------------------------------- structured patchout

def _kept_patches(patchout: Patchout, f_dim: int, t_dim: int, device: torch.device) -> torch.Tensor:
    """Flat indices (frequency rows, time fastest) of the patches in the kept rows and columns."""
    rows, cols = patchout
    rows = torch.arange(f_dim, device=device) if rows is None else torch.as_tensor(rows, device=device)
    cols = torch.arange(t_dim, device=device) if cols is None else torch.as_tensor(cols, device=device)
    if rows.numel() == 0 or cols.numel() == 0:
        raise ConfigError("patchout keeps no patch: at least one frequency row and one time column must stay")
    if int(rows.min()) < 0 or int(rows.max()) >= f_dim or int(cols.min()) < 0 or int(cols.max()) >= t_dim:
        raise ConfigError(f"patchout rows/columns out of the {f_dim}x{t_dim} patch grid")
    return (rows[:, None] * t_dim + cols[None, :]).reshape(-1)


def patchout_drops(spec: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """How many frequency rows and time columns of a ``grid`` ``(f_dim, t_dim)`` patchout drops,
    from ``spec`` ``(f, t)``: a whole number is a count (``4``: four rows), a number in (0, 1) a
    fraction (``0.4``: 40% of the columns, rounded), 0 none. Dropping every row or every
    column (or a spec that is neither) is a :class:`ConfigError`."""
    drops = []
    for value, size, axis, flag in zip(spec, grid, ("frequency rows", "time columns"), ("f", "t"), strict=True):
        bad = isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        if not bad and isinstance(value, float) and value >= 1 and not value.is_integer():
            bad = True
        if bad:
            raise ConfigError(f"--patchout-{flag} must be a count (0, 1, 2...) or a fraction in (0, 1), got {value!r}")
        count = round(value * size) if 0 < value < 1 else int(value)
        if count >= size:
            raise ConfigError(f"--patchout-{flag} {value:g} drops {count} of the {size} {axis}: at least one must stay")
        drops.append(count)
    return drops[0], drops[1]


def draw_patchout(
    grid: tuple[int, int], drop_f: int, drop_t: int, generator: torch.Generator | None = None
) -> Patchout | None:
    """Kept ``(rows, cols)`` (sorted index tensors; ``None`` for an axis without drops) after
    dropping ``drop_f`` random frequency rows and ``drop_t`` random time columns of ``grid``;
    ``None`` when nothing is dropped."""
    if not drop_f and not drop_t:
        return None
    f_dim, t_dim = grid
    if drop_f >= f_dim or drop_t >= t_dim:
        raise ConfigError(f"patchout would drop every row or column of the {f_dim}x{t_dim} patch grid")
    rows = torch.randperm(f_dim, generator=generator)[: f_dim - drop_f].sort().values if drop_f else None
    cols = torch.randperm(t_dim, generator=generator)[: t_dim - drop_t].sort().values if drop_t else None
    return rows, cols


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
