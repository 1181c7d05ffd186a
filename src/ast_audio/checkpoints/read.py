"""Reading every checkpoint layout AST users arrive with, safely, into the original AST names.

Layouts (all converted to the original AST parameter names, ``v.*`` + ``mlp_head.*``, by
the rename tables of :mod:`ast_audio.checkpoints.layouts`):

- ``ast``: the original AST ``.pth`` (``module.`` prefix from DataParallel or not);
- ``deit``: timm / facebookresearch DeiT distilled ImageNet weights (``{"model": sd}`` or sd);
- ``ssast``: SSAST's self-supervised pretraining checkpoints (``module.``, patch-based, no
  classifier: loading puts a fresh head on; the pretraining heads and mask token are kept
  apart in :attr:`RawCheckpoint.pretraining`), and ours of ``ast-audio pretrain`` (an
  ``ast-audio`` file holding those parts), read the same way;
- ``hf``: Hugging Face ``ASTForAudioClassification`` / ``ASTModel``, with the key names of
  transformers 4 (``encoder.layer.N.attention.attention.query``, what the hub files hold)
  or transformers 5 (``layers.N.attention.q_proj``), plus ``config.json``;
- ``ast-audio``: ours, self-describing: a ``.safetensors`` file whose metadata holds the
  architecture (``config``), the labels (``info``) and the input contract
  (``input_contract``), or a weights-only torch file holding the same as a dict. Files
  written before the contract was one object hold its settings as flat keys of ``info``
  (``dataset_mean``, ``multilabel``...), with or without ``input_contract``; both are read
  (:meth:`~ast_audio.model.info.ModelInfo.from_dict`).

Nothing is unpickled beyond tensors and plain containers (``weights_only=True``); a file
with any other pickled object is refused before any of it runs. Published names resolve
through :mod:`ast_audio.checkpoints.hub`.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..audio.io import os_error_reason
from ..errors import CheckpointError, ConfigError
from ..features.contract import InputContract
from ..model.config import ASTConfig
from ..model.info import ModelInfo
from .hub import PublishedCheckpoint, name_hint, published_entry, resolve
from .layouts import (
    DEIT,
    ORIGINAL,
    SSAST_PRETRAINING,
    config_from_hf,
    drop_ssast_pretraining,
    drop_unused,
    hf_to_original,
    infer_config,
    is_ssast,
    to_ours,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "RawCheckpoint", "check_finite", "read_checkpoint"]

FORMAT_NAME = "ast-audio"
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- safe reading


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next(
            (line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else ""
        )
        raise CheckpointError(
            "refused: the file holds pickled Python objects besides tensors, which could run code when loaded "
            f"(only weights are loaded; {detail.strip()[:160]})",
            path,
        ) from None
    except Exception as err:  # noqa: BLE001 - a corrupt archive or pickle fails in many ways (fuzzing found IndexError, ...)
        raise CheckpointError(
            f"not a readable PyTorch checkpoint ({type(err).__name__}: {str(err)[:160]})", path
        ) from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"not a readable safetensors file ({str(err)[:160]})", path) from None


def _only_tensors(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("expected a state dict (a mapping of names to tensors)", path)
    for key in ("model", "state_dict", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"expected a state dict of tensors; {bad[0]!r} is a {type(obj[bad[0]]).__name__}", path
        )
    return {str(k): v for k, v in obj.items()}


@dataclass
class RawCheckpoint:
    """Tensors in the original AST naming, with what is known of the architecture."""

    state: dict[str, torch.Tensor]
    layout: str
    path: Path
    config: ASTConfig | None = None  # known exactly (ours, HF config) or None (infer)
    info: ModelInfo | None = None
    published: PublishedCheckpoint | None = None
    pretraining: dict[str, torch.Tensor] | None = None  # SSAST's heads and mask token (layout "ssast")


def _pretraining_parts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(SSAST_PRETRAINING)}


def read_checkpoint(source: str | os.PathLike) -> RawCheckpoint:
    """Resolve ``source`` and read it into the original AST naming (no model built)."""
    path = resolve(source)
    published = published_entry(path)
    if path.is_dir():
        return _read_hf_dir(path)
    try:  # the reason a file cannot be opened is said in words; the readers' own messages name the wrong cause
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CheckpointError(os_error_reason(err, path), path) from None
    if path.suffix == ".json":
        return _read_hf_dir(path.parent)
    if path.suffix == ".safetensors":
        state, meta = _safetensors_load(path)
        if FORMAT_NAME in meta:
            try:
                doc = json.loads(meta[FORMAT_NAME])
            except json.JSONDecodeError as err:
                raise CheckpointError(f"ast-audio checkpoint whose metadata is not JSON ({err})", path) from None
            return _ours(state, doc, path)
    else:
        obj = _torch_load(path)
        if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
            return _ours(_only_tensors(obj.get("state_dict"), path), obj, path)
        state = _only_tensors(obj, path)
    return _classify(state, path, published)


def _ours(state: dict[str, torch.Tensor], meta: dict, path: Path) -> RawCheckpoint:
    try:
        if not isinstance(meta, dict):
            raise TypeError(f"the metadata is a JSON {type(meta).__name__}, not an object")
        if not isinstance(meta.get("config"), dict):
            raise TypeError("no 'config' object")
        config = ASTConfig.from_dict(meta["config"])
        info = ModelInfo.from_dict(meta.get("info") or {})  # earlier files: the contract's flat keys
        if "input_contract" in meta:  # the contract as one object: what the model takes
            contract = InputContract.from_dict(meta["input_contract"])
            _check_size(contract, config, path)
            info = replace(info, contract=contract, statistics=True)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, ConfigError) as err:
        raise CheckpointError(f"ast-audio checkpoint with a broken config: {err}", path) from None
    pretraining = _pretraining_parts(state)
    if pretraining:  # written by `ast-audio pretrain`: read as an SSAST checkpoint (no classifier)
        return RawCheckpoint(drop_ssast_pretraining(state), "ssast", path, config, info, pretraining=pretraining)
    return RawCheckpoint(state, FORMAT_NAME, path, config, info)


def _check_size(contract: InputContract, config: ASTConfig, path: Path) -> None:
    """A saved input contract must agree with the architecture on the input size."""
    if (contract.num_mel_bins, contract.target_length) != (config.input_fdim, config.input_tdim):
        raise CheckpointError(
            f"the input contract ({contract.target_length} frames x {contract.num_mel_bins} bins) disagrees with "
            f"the model config ({config.input_tdim} x {config.input_fdim})", path,
        )  # fmt: skip


def _classify(
    state: dict[str, torch.Tensor], path: Path, published: PublishedCheckpoint | None
) -> RawCheckpoint:
    if all(k.startswith("module.") for k in state):
        state = to_ours(state, ORIGINAL, path=path)
    keys = set(state)
    if "v.cls_token" in keys and is_ssast(state):
        return RawCheckpoint(drop_unused(drop_ssast_pretraining(state)), "ssast", path, published=published,
                             pretraining=_pretraining_parts(state))  # fmt: skip
    if "v.cls_token" in keys:
        return RawCheckpoint(drop_unused(state), "ast", path, published=published)
    if "cls_token" in keys and "dist_token" in keys:
        return RawCheckpoint(drop_unused(to_ours(state, DEIT, path=path)), "deit", path, published=published)
    if any("embeddings.cls_token" in k for k in keys):
        config_file = path.parent / "config.json"
        hf_config = _read_json(config_file) if config_file.exists() else None
        return _hf_checkpoint(state, path, hf_config)
    raise CheckpointError(
        "unrecognised checkpoint layout (neither original AST, DeiT, Hugging Face AST nor ast-audio); "
        f"first keys: {', '.join(sorted(keys)[:3])}",
        path,
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read JSON: {err}", path) from None


# --------------------------------------------------------------------------- Hugging Face


def _read_hf_dir(folder: Path) -> RawCheckpoint:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError("a Hugging Face model folder needs config.json", folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.exists():
            break
    else:
        raise CheckpointError("no model.safetensors or pytorch_model.bin in the folder", folder)
    if weights.suffix == ".safetensors":
        state, _ = _safetensors_load(weights)
    else:
        state = _only_tensors(_torch_load(weights), weights)
    return _hf_checkpoint(state, weights, _read_json(config_file))


def _hf_checkpoint(state: dict[str, torch.Tensor], path: Path, hf: dict | None) -> RawCheckpoint:
    state = hf_to_original(state, path)
    if hf is None:
        return RawCheckpoint(state, "hf", path)
    pre = path.parent / "preprocessor_config.json"
    try:
        config, info = config_from_hf(hf, state, _read_json(pre) if pre.exists() else None)
    except (ConfigError, TypeError, ValueError, AttributeError, KeyError, OverflowError) as err:
        raise CheckpointError(f"config.json does not describe an AST model: {err}", path) from None
    return RawCheckpoint(state, "hf", path, config, info)


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse a checkpoint with a NaN or infinite value, naming the first such parameter."""
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"parameter {key!r} has {bad} non-finite values (NaN or Inf): the model would output NaN "
                    "(load_model(..., allow_nonfinite=True) or --allow-nonfinite loads it anyway, to inspect it)",
                    path,
                )


def check_fits(state: dict[str, torch.Tensor], config: ASTConfig, path: Path) -> None:
    """A config (from the file's own JSON) that cannot fit its tensors is refused before a
    model of its size is built: width and depth."""
    token = state.get("v.cls_token")
    if token is not None and token.shape[-1] != config.embed_dim:
        raise CheckpointError(f"the config describes a {config.model_size} model ({config.embed_dim} dims) but "
                              f"the weights have {token.shape[-1]} dims", path)  # fmt: skip
    blocks = {k.split(".")[2] for k in state if k.startswith("v.blocks.")}
    if len(blocks) != config.depth:
        raise CheckpointError(f"the config describes {config.depth} blocks but the weights have {len(blocks)}", path)


def checkpoint_config(
    raw: RawCheckpoint, *, fstride=None, tstride=None, input_fdim=None, input_tdim=None
) -> tuple[ASTConfig, ModelInfo]:
    """The architecture a checkpoint was trained with: its own config, else inferred from its tensors."""
    if raw.config is not None:
        return raw.config, raw.info or ModelInfo()
    return infer_config(
        raw.state, raw.layout, raw.path, name_hint=name_hint(raw.path, raw.published),
        fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim,
    )  # fmt: skip
