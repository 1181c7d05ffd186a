"""Structured patchout (PaSST, Koutini et al. 2022): training drops whole frequency rows and
time columns of the patch grid; :meth:`ASTModel.forward_tokens` runs the kept patches only."""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["Patchout", "draw_patchout", "kept_patches"]

Patchout = tuple  # (rows, cols): kept frequency rows and time columns of the patch grid (see draw_patchout)


def kept_patches(patchout: Patchout, f_dim: int, t_dim: int, device: torch.device) -> torch.Tensor:
    """Flat indices (frequency rows, time fastest) of the patches in the kept rows and columns."""
    rows, cols = patchout
    rows = torch.arange(f_dim, device=device) if rows is None else torch.as_tensor(rows, device=device)
    cols = torch.arange(t_dim, device=device) if cols is None else torch.as_tensor(cols, device=device)
    if rows.numel() == 0 or cols.numel() == 0:
        raise ConfigError("patchout keeps no patch: at least one frequency row and one time column must stay")
    if int(rows.min()) < 0 or int(rows.max()) >= f_dim or int(cols.min()) < 0 or int(cols.max()) >= t_dim:
        raise ConfigError(f"patchout rows/columns out of the {f_dim}x{t_dim} patch grid")
    return (rows[:, None] * t_dim + cols[None, :]).reshape(-1)


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
