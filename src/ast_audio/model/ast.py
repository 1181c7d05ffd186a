"""The Audio Spectrogram Transformer (Gong, Chung and Glass, Interspeech 2021).

A DeiT *distilled* ViT over a log-mel spectrogram: 16x16 patches cut with strides
``(fstride, tstride)``, a ``cls`` and a ``dist`` token in front, learned absolute
positions, pre-norm transformer blocks, and a head over the mean of the two tokens
(``pool="mean"``: of the patch tokens, for small models trained from scratch).

Parameter names equal the original implementation's (``v.blocks.N.attn.qkv.weight``,
``mlp_head.1.weight``...), so its checkpoints load after stripping ``module.``.

Model surgery is made of methods (timm style): :meth:`ASTModel.set_input_size`
re-grids the position embedding for another length or strides (the rule lives in
:mod:`ast_audio.model.pos_embed`), :meth:`ASTModel.reset_classifier` puts a fresh head on,
:meth:`ASTModel.forward_features` / :meth:`ASTModel.forward_head` give the pooled token
(``pre_logits=True``), and ``any_length=True`` runs inputs shorter than ``input_tdim``
with the position grid cut in the graph (what the ONNX export with a dynamic time axis
traces). The config is :mod:`ast_audio.model.config`; labels and the input contract are
:mod:`ast_audio.model.info`.

**Pretrained weights without importing the checkpoint code.** Arrows point down, so this
file never imports :mod:`ast_audio.checkpoints`, yet the original constructor
(``ASTModel(..., imagenet_pretrain=True)``) loads weights and :meth:`ASTModel.from_pretrained`
is the loading classmethod: the checkpoint module, when imported, hands its loaders to
:func:`~ast_audio.model.weights.provide_weights` (a factory in place of the class would
break ``isinstance`` and subclassing).

Over 400 lines: the blocks, the model with the original's constructor, its surgery and its
forward paths are one architecture that every loader, trainer and exporter shares.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..features.contract import InputContract
from .clipstats import ClipStatsHead
from .config import PATCH, ASTConfig
from .info import ModelInfo, describe, missing_statistics
from .patchout import Patchout, kept_patches
from .pos_embed import NUM_PREFIX_TOKENS, adapt_pos_embed, crop_time
from .weights import weights

log = logging.getLogger(__name__)

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
        pool: str = "cls",
        clip_stats: bool = False,
    ):
        super().__init__()
        cfg = ASTConfig(
            label_dim, fstride, tstride, input_fdim, input_tdim, model_size, depth, layer_norm_eps, pool, clip_stats
        )
        self.config = cfg
        self.info = ModelInfo()  # labels and input contract (see the info property)
        self.grad_checkpointing = False  # see set_grad_checkpointing
        self.v = Backbone(cfg)
        self.mlp_head = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, label_dim))
        # the clip-statistics branch (model/clipstats.py), zero until train/clipstats.py fits it
        self.stats_head = ClipStatsHead(input_fdim, label_dim) if clip_stats else None
        self.reset_parameters()

        if audioset_pretrain:
            weights("init_trunk")(self, audioset_pretrain, "audioset")
        elif imagenet_pretrain:
            weights("init_trunk")(self, imagenet_pretrain, "imagenet")
        if verbose:
            log.info(describe(cfg, sum(p.numel() for p in self.parameters())))

    @classmethod
    def from_config(cls, cfg: ASTConfig, info: ModelInfo | None = None) -> ASTModel:
        """A randomly initialised model (no pretrained weights) for ``cfg``."""
        model = cls(
            cfg.label_dim, cfg.fstride, cfg.tstride, cfg.input_fdim, cfg.input_tdim,
            imagenet_pretrain=False, audioset_pretrain=False, model_size=cfg.model_size, verbose=False,
            depth=cfg.depth, layer_norm_eps=cfg.layer_norm_eps, pool=cfg.pool, clip_stats=cfg.clip_stats,
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
        return weights("load")(
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
        if self.stats_head is not None:
            self.stats_head.reset_parameters()

    # ----------------------------------------------------------------- surgery

    def reset_classifier(self, label_dim: int) -> None:
        """Replace the classification head by a fresh one with ``label_dim`` outputs (labels forgotten)."""
        dim = self.config.embed_dim
        ref = self.mlp_head[1].weight
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, label_dim)).to(ref.device, ref.dtype)
        if self.stats_head is not None:
            self.stats_head = ClipStatsHead(self.config.input_fdim, label_dim).to(ref.device)
        self.config = replace(self.config, label_dim=label_dim)
        self.info = replace(self.info, labels=None, label_ids=None)

    @property
    def info(self) -> ModelInfo:
        """Labels and input contract; the contract's input size is always this model's."""
        return self._info

    @info.setter
    def info(self, info: ModelInfo) -> None:
        self._info = info.fit(self.config)

    @property
    def input_contract(self) -> InputContract:
        """What this model takes: ``info.contract``; statistics that no one recorded are
        AudioSet's, with a warning (:func:`~ast_audio.model.info.missing_statistics`)."""
        return missing_statistics(self.info).contract

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
        self.info = self.info  # the contract takes the new input size
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
            keep = kept_patches(patchout, f_dim, t_dim, x.device)  # (N',) flat indices of the kept patches
            x = x[:, keep] + pos[:, NUM_PREFIX_TOKENS:][:, keep]  # (B, N', D)
            prefix = torch.cat([v.cls_token, v.dist_token], dim=1) + pos[:, :NUM_PREFIX_TOKENS]  # (1, 2, D)
            x = torch.cat([prefix.expand(B, -1, D), x], dim=1)  # (B, 2+N', D)
        for block in v.blocks:
            if self.grad_checkpointing and attn_maps is None and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, attn_maps)
        return v.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled token ``(B, D)`` of ``(B, 2 + N, D)`` outputs: AST's mean of the ``cls`` and
        ``dist`` outputs, or with ``config.pool == "mean"`` the mean of the ``N`` patch outputs."""
        if self.config.pool == "mean":
            return tokens[:, NUM_PREFIX_TOKENS:].mean(dim=1)
        return (tokens[:, 0] + tokens[:, 1]) / 2

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        any_length: bool = False,
        positions: str = "centre",
        patchout: Patchout | None = None,
    ) -> torch.Tensor:
        """The pooled embedding ``(B, D)`` (:meth:`pool`; ``any_length``, ``positions``,
        ``patchout``: see :meth:`forward_tokens`)."""
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
        them: patchout and length-bucketed batches; evaluation and inference use neither).
        With the clip-statistics branch, its logits are added (see :mod:`.clipstats`)."""
        logits = self.forward_head(
            self.forward_features(x, any_length=any_length, positions=positions, patchout=patchout)
        )
        return self._with_stats(logits, x)

    def _with_stats(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.stats_head is None:
            return logits
        return logits + self.stats_head(x).to(logits.dtype)

    def token_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Patch outputs laid out on the patch grid: ``(B, f_dim, t_dim, D)``."""
        tokens = self.forward_tokens(x)[:, NUM_PREFIX_TOKENS:]
        f_dim, t_dim = self.config.grid
        return tokens.reshape(tokens.shape[0], f_dim, t_dim, tokens.shape[-1])  # (B, f, t, D)

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every layer's attention weights, each ``(B, heads, 2+N, 2+N)``."""
        maps: list[torch.Tensor] = []
        tokens = self.forward_tokens(x, attn_maps=maps)
        return self._with_stats(self.forward_head(self.pool(tokens)), x), maps

    def flops(self) -> int:
        """Multiply-accumulates x2 of one forward pass on one clip (matmuls only)."""
        cfg = self.config
        n, d = cfg.num_patches + 2, cfg.embed_dim
        per_block = 2 * n * d * (3 * d + d + 8 * d) + 2 * 2 * n * n * d
        patch = 2 * cfg.num_patches * d * PATCH * PATCH
        return int(cfg.depth * per_block + patch + 2 * d * cfg.label_dim)
