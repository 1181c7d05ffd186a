"""Self-supervised pretraining of AST: SSAST's masked spectrogram patch modelling
(Gong, Lai, Chung and Glass, AAAI 2022).

A share of the 16x16 patches of the input is masked: their patch embeddings are replaced
by a learned ``mask_embed`` before the positions are added, and the transformer sees the
rest. From each masked patch's output token two heads predict the patch itself:

- ``cpredlayer`` (discriminative): a 256-d vector whose dot product with the true patch
  (its 16x16 normalised filterbank values, flattened) must pick that patch among the
  clip's masked patches: InfoNCE over the masked patches, the other masked patches of
  the same clip being the negatives; the share picked right is the masked-patch accuracy;
- ``gpredlayer`` (generative): the patch's 256 filterbank values, mean squared error.

The loss is ``InfoNCE + 10 * MSE`` (the paper's weighting). The patches are cut without
overlap (strides 16/16) and SSAST masks 400 of the 512 patches of AudioSet's 128 bins x
1024 frames; other grids mask the same share (:func:`mask_count`). Masking is random or
clustered (:func:`draw_masks`): clustered masking masks squares of 3x3 to 5x5 patches
(one side per clip), so a masked patch's neighbours are often masked too and it cannot
be copied from them.

Both heads read the output of one forward pass over one mask (the original runs one pass
per head, each with its own mask: twice the compute for the same two losses).
Parameter names are SSAST's (``cpredlayer.0.weight``, ``mask_embed``...) and the trunk is
an :class:`~ast_audio.model.ast.ASTModel` (``model.v``), so its weights fine-tune as any AST.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .ast import ASTModel
from .config import PATCH
from .pos_embed import NUM_PREFIX_TOKENS

__all__ = ["GEN_WEIGHT", "MASKED_SHARE", "MASKINGS", "SSAST", "SSASTLosses", "draw_masks", "mask_count"]

MASKED_SHARE = 400 / 512  # SSAST: 400 of the 512 patches of a 128 x 1024 input
GEN_WEIGHT = 10.0  # loss = InfoNCE + GEN_WEIGHT * MSE, as the paper
MASKINGS = ("cluster", "random")
PATCH_VALUES = PATCH * PATCH  # what each head predicts per patch


def mask_count(num_patches: int, share: float = MASKED_SHARE) -> int:
    """Patches masked per clip on a grid of ``num_patches``: SSAST's share, at least one
    patch and at least one patch left visible."""
    if num_patches < 2:
        raise ConfigError(f"masked patch modelling needs at least 2 patches, the grid has {num_patches}")
    return min(max(1, round(num_patches * share)), num_patches - 1)


def _cluster_mask(grid: tuple[int, int], count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` patch indices made of squares of side 3..5 (one side per clip) at random
    places, cut at the grid's edges; the surplus of the last square dropped at random."""
    f_dim, t_dim = grid
    side = 3 + int(torch.randint(3, (1,), generator=gen))
    chosen = torch.zeros(f_dim, t_dim, dtype=torch.bool)
    while int(chosen.sum()) < count:
        row = int(torch.randint(f_dim, (1,), generator=gen))
        col = int(torch.randint(t_dim, (1,), generator=gen))
        chosen[row : row + side, col : col + side] = True
    flat = chosen.flatten().nonzero().squeeze(1)  # frequency rows, time fastest: the token order
    return flat[torch.randperm(len(flat), generator=gen)[:count]]


def draw_masks(
    batch: int, grid: tuple[int, int], count: int, masking: str = "cluster", gen: torch.Generator | None = None
) -> torch.Tensor:
    """``(batch, count)`` indices of the masked patches of each clip (distinct within a clip;
    token order: frequency rows, time fastest), drawn from ``gen``."""
    if masking not in MASKINGS:
        raise ConfigError(f"masking must be one of {', '.join(MASKINGS)}, got {masking!r}")
    num_patches = grid[0] * grid[1]
    if not 1 <= count < num_patches:
        raise ConfigError(f"the masked patches must number 1..{num_patches - 1} on a {grid[0]}x{grid[1]} grid, "
                          f"got {count}")  # fmt: skip
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    if masking == "random":
        rows = [torch.randperm(num_patches, generator=gen)[:count] for _ in range(batch)]
    else:
        rows = [_cluster_mask(grid, count, gen) for _ in range(batch)]
    return torch.stack(rows)


class SSASTLosses(NamedTuple):
    """One batch's objective: ``loss = disc + GEN_WEIGHT * gen`` and the masked-patch accuracy."""

    loss: torch.Tensor
    disc: torch.Tensor  # InfoNCE over each clip's masked patches
    gen: torch.Tensor  # MSE of the reconstructed masked patches
    acc: torch.Tensor  # share of masked patches whose prediction picks their own patch


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, PATCH_VALUES))


class SSAST(nn.Module):
    """The pretraining wrapper: ``model`` (the AST trunk being pretrained; its head is not
    used), the two prediction heads and the mask token. ``forward(x, masked)`` takes
    normalised filterbanks ``[batch, time, mel]`` and the masked patch indices of
    :func:`draw_masks`, and returns :class:`SSASTLosses`."""

    def __init__(self, model: ASTModel):
        super().__init__()
        cfg = model.config
        if (cfg.fstride, cfg.tstride) != (PATCH, PATCH):
            raise ConfigError(f"pretraining cuts patches without overlap (fstride = tstride = {PATCH}), "
                              f"got {cfg.fstride}/{cfg.tstride}")  # fmt: skip
        dim = cfg.embed_dim
        self.model = model
        self.cpredlayer = _head(dim)
        self.gpredlayer = _head(dim)
        self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.zeros(1, 1, dim)))

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.config.grid

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The input's 16x16 patches as ``(B, N, 256)``, in token order."""
        spec = x.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        return F.unfold(spec, PATCH, stride=PATCH).transpose(1, 2)  # (B, N, 256)

    def encode(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Output tokens ``(B, 2 + N, D)`` of the input with the ``masked`` patches' embeddings
        replaced by ``mask_embed``."""
        model = self.model
        model._check_input(x)
        v = model.v
        tokens = v.patch_embed.proj(x.unsqueeze(1).transpose(2, 3))  # (B, D, f, t)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D)
        B, N, D = tokens.shape
        hidden = torch.zeros(B, N, dtype=torch.bool, device=x.device).scatter_(1, masked, True)
        tokens = torch.where(hidden.unsqueeze(-1), self.mask_embed.to(tokens.dtype), tokens)
        prefix = torch.cat([v.cls_token.expand(B, -1, -1), v.dist_token.expand(B, -1, -1)], dim=1)  # (B, 2, D)
        tokens = torch.cat([prefix, tokens], dim=1) + v.pos_embed  # (B, 2+N, D)
        for block in v.blocks:
            if model.grad_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return v.norm(tokens)

    def forward(self, x: torch.Tensor, masked: torch.Tensor) -> SSASTLosses:
        target = self.patches(x).float()  # (B, N, 256)
        tokens = self.encode(x, masked)
        index = masked.unsqueeze(-1)  # (B, M, 1)
        out = tokens[:, NUM_PREFIX_TOKENS:].gather(1, index.expand(-1, -1, tokens.shape[-1]))  # (B, M, D)
        truth = target.gather(1, index.expand(-1, -1, PATCH_VALUES))  # (B, M, 256)
        disc_pred = self.cpredlayer(out).float()  # (B, M, 256)
        gen_pred = self.gpredlayer(out).float()
        scores = truth @ disc_pred.transpose(1, 2)  # (B, M, M): true patch i . prediction j
        disc = -scores.log_softmax(dim=-1).diagonal(dim1=1, dim2=2).mean()
        own = torch.arange(scores.shape[1], device=x.device)
        acc = (scores.argmax(dim=1) == own).float().mean()  # each prediction's best-matching patch
        gen = F.mse_loss(gen_pred, truth)
        return SSASTLosses(disc + GEN_WEIGHT * gen, disc, gen, acc)

    def pretraining_state(self) -> dict[str, torch.Tensor]:
        """The pretraining parts in SSAST's names (what fine-tuning drops): the heads and the mask token."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}
