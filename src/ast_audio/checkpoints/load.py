"""Loading checkpoints into models, and writing ours.

:func:`load_model` is "read safely (:mod:`~ast_audio.checkpoints.read`), infer the config,
adapt, load strictly"; the registry and the rename tables live in
:mod:`~ast_audio.checkpoints.hub` and :mod:`~ast_audio.checkpoints.layouts`.

This module gives :class:`~ast_audio.model.ast.ASTModel` its pretrained weights: on import it
hands :func:`init_from_pretrained` and :func:`_load` to :func:`ast_audio.model.weights.provide_weights`
(the model file never imports this one).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from ..base.fileio import atomic_write, output_folder, save_torch
from ..errors import CheckpointError
from ..model.ast import ASTModel
from ..model.config import ASTConfig
from ..model.info import missing_statistics
from ..model.pos_embed import adapt_pos_embed
from ..model.ssast import SSAST
from ..model.weights import provide_weights
from .hub import DEFAULT_AUDIOSET, IMAGENET_FOR_SIZE
from .layouts import ORIGINAL, SSAST_INPUT, UNUSED, config_to_hf, from_ours, original_to_hf, require_plain_ast
from .read import FORMAT_NAME, FORMAT_VERSION, check_finite, check_fits, checkpoint_config, read_checkpoint

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- loading into models


def load_state_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, prefix: str = ""
) -> None:
    """``load_state_dict(strict=True)`` with an error that names the parameter (with ``prefix``,
    as the checkpoint spells it) and both shapes."""
    own = module.state_dict()

    def listing(kind: str, keys: list[str]) -> str:
        more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
        return f"{kind} parameter {prefix + keys[0]!r}{more}"

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(listing("missing", missing), path)
    if unexpected:
        raise CheckpointError(listing("unexpected", unexpected), path)
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"parameter {prefix + key!r} has shape {list(state[key].shape)} in the checkpoint "
                f"but the model needs {list(tensor.shape)}",
                path,
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _backbone_state(
    state: dict[str, torch.Tensor], src: ASTConfig, dst: ASTConfig, path: Path
) -> dict[str, torch.Tensor]:
    """The ``v.*`` tensors of ``state`` made to fit ``dst``: positions adapted, patch projection to 1 channel."""
    out = {k[2:]: v for k, v in state.items() if k.startswith("v.")}
    if src.embed_dim != dst.embed_dim:
        raise CheckpointError(
            f"the checkpoint's embedding dimension is {src.embed_dim} ({src.model_size}) but the model's is "
            f"{dst.embed_dim} ({dst.model_size})",
            path,
        )
    proj = out.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() == 4 and proj.shape[1] == 3:
        out["patch_embed.proj.weight"] = proj.sum(dim=1, keepdim=True)  # RGB -> one channel
    if "pos_embed" in out:
        expected = src.num_patches + 2
        if out["pos_embed"].shape[1] != expected:
            raise CheckpointError(
                f"parameter 'v.pos_embed' has {out['pos_embed'].shape[1]} positions but a {src.grid[0]}x{src.grid[1]} "
                f"grid needs {expected}",
                path,
            )
        out["pos_embed"] = adapt_pos_embed(out["pos_embed"], src.grid, dst.grid)
    return out


def init_from_imagenet(model: ASTModel, source: bool | str | os.PathLike) -> None:
    """Initialise the trunk from DeiT ImageNet weights (the original's ``imagenet_pretrain``)."""
    cfg = model.config
    if source is True:
        source = IMAGENET_FOR_SIZE[cfg.model_size]
    raw = read_checkpoint(source)
    check_finite(raw.state, raw.path)
    src_cfg, _ = checkpoint_config(raw)
    if raw.layout == "deit":
        side = src_cfg.grid[0]
        expected = cfg.size.imagenet_grid
        if side != expected:
            log.warning("%s has a %dx%d position grid; %s's own weights have %dx%d", raw.path, side, side,
                        cfg.model_size, expected, expected)  # fmt: skip
    if src_cfg.depth != cfg.depth:
        raise CheckpointError(
            f"the checkpoint has {src_cfg.depth} blocks but the model has {cfg.depth}", raw.path
        )
    load_state_strict(model.v, _backbone_state(raw.state, src_cfg, cfg, raw.path), raw.path, "v.")


def init_from_audioset(model: ASTModel, source: bool | str | os.PathLike) -> None:
    """Initialise the trunk from an AudioSet-trained AST (the original's ``audioset_pretrain``).

    Any AST checkpoint layout works; the position grid is cut or interpolated to this
    model's grid, the patch projection takes this model's strides, and the head is new.
    """
    cfg = model.config
    if source is True:
        source = DEFAULT_AUDIOSET
    raw = read_checkpoint(source)
    check_finite(raw.state, raw.path)
    if raw.layout == "deit":
        raise CheckpointError("this is an ImageNet DeiT file; pass it as imagenet_pretrain", raw.path)
    src_cfg, info = checkpoint_config(raw)
    if src_cfg.depth != cfg.depth:
        raise CheckpointError(
            f"the checkpoint has {src_cfg.depth} blocks but the model has {cfg.depth}", raw.path
        )
    load_state_strict(model.v, _backbone_state(raw.state, src_cfg, cfg, raw.path), raw.path, "v.")
    if info.statistics:  # the statistics the trunk was trained with
        stats = {"mean": info.contract.mean, "std": info.contract.std}
        model.info = replace(model.info, contract=model.info.contract.replace(**stats), statistics=True)


def init_from_pretrained(model: ASTModel, source: bool | str | os.PathLike, kind: str) -> None:
    """The constructor's ``imagenet_pretrain`` (``kind="imagenet"``) / ``audioset_pretrain``."""
    (init_from_audioset if kind == "audioset" else init_from_imagenet)(model, source)


def load_model(
    source: str | os.PathLike,
    *,
    label_dim: int | None = None,
    fstride: int | None = None,
    tstride: int | None = None,
    input_tdim: int | None = None,
    input_fdim: int | None = None,
    device: str | torch.device | None = None,
    allow_nonfinite: bool = False,
) -> ASTModel:
    """A ready :class:`ASTModel` (in eval mode) from any checkpoint users arrive with.

    ``source`` is a file, a Hugging Face model folder, or a published name (see
    :data:`REGISTRY`; downloaded into :func:`cache_dir` once). For an original ``.pth``
    the strides and length it was trained with come from its published file name
    (``audioset_{f}_{t}_{score}.pth``), else from the arguments, else 10/10 and the
    dataset's length. Other arguments that differ from the checkpoint's adapt it: a new
    ``input_tdim`` / strides re-grid the position embedding (cut or interpolate), a new
    ``label_dim`` puts a fresh head on top. ``ASTModel.from_pretrained`` is the same.
    A checkpoint with NaN or infinite weights is refused (naming the parameter) unless
    ``allow_nonfinite``.
    """
    return _load(
        ASTModel, source, label_dim=label_dim, fstride=fstride, tstride=tstride,
        input_tdim=input_tdim, input_fdim=input_fdim, device=device, allow_nonfinite=allow_nonfinite,
    )  # fmt: skip


def _load(
    cls: type[ASTModel], source, *, label_dim=None, fstride=None, tstride=None, input_tdim=None,
    input_fdim=None, device=None, allow_nonfinite=False,
) -> ASTModel:  # fmt: skip
    raw = read_checkpoint(source)
    if not allow_nonfinite:
        check_finite(raw.state, raw.path)
    if raw.layout == "deit":
        deit_cfg, _ = checkpoint_config(raw)
        model = cls(
            label_dim or 527, fstride or 10, tstride or 10, input_fdim or 128, input_tdim or 1024,
            imagenet_pretrain=str(raw.path), model_size=deit_cfg.model_size, verbose=False, depth=deit_cfg.depth,
        )  # fmt: skip
        return model.to(device).eval() if device else model.eval()
    native, info = checkpoint_config(
        raw, fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim
    )
    check_fits(raw.state, native, raw.path)
    wanted = native.replace(fstride=fstride, tstride=tstride, input_tdim=input_tdim, input_fdim=input_fdim)
    model = cls.from_config(wanted, missing_statistics(info, raw.path))  # the one policy, once, at load
    load_state_strict(model.v, _backbone_state(raw.state, native, wanted, raw.path), raw.path, "v.")
    head = {k[len("mlp_head.") :]: v for k, v in raw.state.items() if k.startswith("mlp_head.")}
    if raw.layout == "ssast":  # self-supervised: no classifier, the model's fresh head stays
        log.info("%s: SSAST pretraining checkpoint; the %d-output head is new (train it)", raw.path,
                 label_dim or native.label_dim)  # fmt: skip
    elif not head:
        raise CheckpointError("no classification head (mlp_head / classifier) in the checkpoint", raw.path)
    else:
        load_state_strict(model.mlp_head, head, raw.path, "mlp_head.")
    _load_stats_head(model, raw)
    if label_dim is not None and label_dim != native.label_dim:
        log.info(
            "%s: new %d-class head in place of the checkpoint's %d classes",
            raw.path,
            label_dim,
            native.label_dim,
        )
        model.reset_classifier(label_dim)
    if device is not None:
        model.to(device)
    return model.eval()


def _load_stats_head(model: ASTModel, raw) -> None:
    """The clip-statistics branch (``config.clip_stats``): its weights must be there, and only then."""
    state = {k[len("stats_head.") :]: v for k, v in raw.state.items() if k.startswith("stats_head.")}
    if model.stats_head is None:
        if state:
            raise CheckpointError("stats_head weights in a checkpoint whose config has no clip_stats", raw.path)
        return
    if not state:
        raise CheckpointError("the config has clip_stats but the checkpoint has no stats_head weights", raw.path)
    load_state_strict(model.stats_head, state, raw.path, "stats_head.")


# The model file does not import this one: the checkpoint code hands it the weight loaders.
provide_weights(init_trunk=init_from_pretrained, load=_load)


# --------------------------------------------------------------------------- our format


def _cpu_state(model: ASTModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _metadata(model: ASTModel) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "info": {"labels": model.info.labels, "label_ids": model.info.label_ids, "extra": model.info.extra},
        "input_contract": model.input_contract.to_dict(),
    }


def save_checkpoint(model: ASTModel, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model`` in the self-describing format, atomically.

    ``.safetensors``: weights + JSON metadata (config, labels and the complete input
    contract, readable without this package, like Hugging Face's ``preprocessor_config.json``). Any other suffix: a
    weights-only torch file ``{"format", "version", "config", "info", "input_contract",
    "state_dict", **extra}``.
    """
    path = Path(path)
    meta = _metadata(model)
    state = _cpu_state(model)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(
            path,
            lambda tmp: save_file(state, str(tmp), metadata={FORMAT_NAME: json.dumps(meta), "format": "pt"}),
        )
    return save_torch({**meta, **(extra or {}), "state_dict": state}, path)


def export_original(model: ASTModel, path: str | os.PathLike) -> Path:
    """The original AST layout: a plain state dict with ``module.`` prefixes (as DataParallel saved it)."""
    require_plain_ast(model.config, "original AST")
    state = from_ours(_cpu_state(model), ORIGINAL)
    return save_torch(state, path)


def export_hf(model: ASTModel, folder: str | os.PathLike) -> Path:
    """A Hugging Face ``ASTForAudioClassification`` folder (config.json, model.safetensors,
    preprocessor_config.json), loadable by transformers' ``from_pretrained``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cfg, info = model.config, model.info
    config, preprocessor = config_to_hf(cfg, info)
    state = original_to_hf(_cpu_state(model))
    if folder.exists() and not folder.is_dir():
        raise CheckpointError("is a file; a Hugging Face model is a folder (give a new or existing folder)", folder)
    with output_folder(folder):  # a folder made here goes again if a write fails
        atomic_write(
            folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
        )
        for name, data in (("config.json", config), ("preprocessor_config.json", preprocessor)):
            atomic_write(
                folder / name,
                lambda tmp, d=data: tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8"),
            )
    return folder


# --------------------------------------------------------------------------- SSAST pretraining files


def save_pretrained(ssast: SSAST, path: str | os.PathLike) -> Path:
    """Write a pretrained SSAST (``ast-audio pretrain``) as an ``ast-audio`` safetensors file:
    the trunk (``v.*``) and SSAST's pretraining parts, no classifier; config, contract and
    ``info.extra`` in the metadata. :func:`load_model` reads it as it reads a published SSAST
    file (a fresh head), and ``audioset_pretrain`` takes its trunk."""
    from safetensors.torch import save_file

    model = ssast.model
    state = {k: v for k, v in _cpu_state(model).items() if k.startswith("v.")}
    state.update({k: v.detach().cpu().contiguous() for k, v in ssast.pretraining_state().items()})
    meta = json.dumps(_metadata(model))
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={FORMAT_NAME: meta, "format": "pt"}))


def export_ssast(source: str | os.PathLike, path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Path:
    """An SSAST pretraining checkpoint (ours or a published one) in the original SSAST layout,
    what the SSAST repository's fine-tuning code loads: a DataParallel state dict
    (``module.``) of the trunk, the unused DeiT heads (``v.head``, ``v.head_dist``: zeros),
    ``cpredlayer``/``gpredlayer``/``mask_embed`` and the pretraining input size
    (``p_input_fdim``/``p_input_tdim``)."""
    raw = read_checkpoint(source)
    if not allow_nonfinite:
        check_finite(raw.state, raw.path)
    if raw.layout != "ssast" or not raw.pretraining:
        raise CheckpointError("not an SSAST pretraining checkpoint (no cpredlayer/gpredlayer/mask_embed): only "
                              "`ast-audio pretrain` files and SSAST's own convert to the SSAST layout", raw.path)  # fmt: skip
    cfg, _ = checkpoint_config(raw)
    if (cfg.fstride, cfg.tstride) != (16, 16):
        raise CheckpointError(f"SSAST pretraining checkpoints cut patches without overlap (strides 16/16); this one "
                              f"has {cfg.fstride}/{cfg.tstride}", raw.path)  # fmt: skip
    state = {k: v for k, v in raw.state.items() if k.startswith("v.")}
    dim = cfg.embed_dim
    for prefix in UNUSED:  # the DeiT ImageNet heads SSAST's files carry (1000 classes, unused)
        state[prefix + "weight"], state[prefix + "bias"] = torch.zeros(1000, dim), torch.zeros(1000)
    state.update(raw.pretraining)
    fdim, tdim = SSAST_INPUT
    state[fdim], state[tdim] = torch.tensor(cfg.input_fdim), torch.tensor(cfg.input_tdim)
    return save_torch({"module." + k: v.contiguous() for k, v in state.items()}, path)
