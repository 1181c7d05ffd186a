"""Reading every checkpoint layout AST users arrive with, safely, and our own format.

(Over 400 lines: four layouts are read and two written here, each with its checks and
one-line errors; the registry, the renames and the download live in their own modules.)

Layouts (all converted to the original AST parameter names, ``v.*`` + ``mlp_head.*``, by
the rename tables of :mod:`ast_audio.checkpoints.layouts`):

- ``ast``: the original AST ``.pth`` (``module.`` prefix from DataParallel or not);
- ``deit``: timm / facebookresearch DeiT distilled ImageNet weights (``{"model": sd}`` or sd);
- ``ssast``: SSAST's self-supervised pretraining checkpoints (``module.``, patch-based, no
  classifier: loading puts a fresh head on; the pretraining heads are dropped);
- ``hf``: Hugging Face ``ASTForAudioClassification`` / ``ASTModel``, with the key names of
  transformers 4 (``encoder.layer.N.attention.attention.query``, what the hub files hold)
  or transformers 5 (``layers.N.attention.q_proj``), plus ``config.json``;
- ``ast-audio``: ours, self-describing: a ``.safetensors`` file whose metadata holds the
  config, label names and normalisation stats, or a weights-only torch file holding the
  same as a dict.

Nothing is unpickled beyond tensors and plain containers (``weights_only=True``); a file
with any other pickled object is refused before any of it runs. Published names resolve
through :mod:`ast_audio.checkpoints.hub`.

This module gives :class:`~ast_audio.model.ast.ASTModel` its pretrained weights: on import it
hands :func:`init_from_pretrained` and :func:`_load` to :func:`ast_audio.model.ast.provide_weights`,
which the constructor's ``imagenet_pretrain`` / ``audioset_pretrain`` and
``ASTModel.from_pretrained`` call (the model file never imports this one).

About 450 lines, over the project's ~400: reading and loading stay together because
``load_model`` is exactly "read safely, infer the config, adapt, load strictly", and the
registry and rename tables already live apart (:mod:`~ast_audio.checkpoints.hub`, :mod:`~ast_audio.checkpoints.layouts`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..base.fileio import atomic_write
from ..data.labels import read_label_csv  # noqa: F401 (re-exported, as before the split)
from ..errors import CheckpointError, ConfigError, DownloadError  # noqa: F401 (DownloadError re-exported)
from ..features.contract import InputContract
from ..features.presets import PRESETS  # noqa: F401 (re-exported)
from ..model import ast as _model
from ..model.ast import SIZES, ASTConfig, ASTModel, ModelInfo, patch_grid, size_for  # noqa: F401 (re-exported)
from ..model.pos_embed import adapt_pos_embed
from .hub import (  # noqa: F401 (re-exported: ast_audio.checkpoints.load has always offered them)
    DEFAULT_AUDIOSET,
    IMAGENET_FOR_SIZE,
    REGISTRY,
    PublishedCheckpoint,
    cache_dir,
    download,
    name_hint,
    published_entry,
    register_checkpoint,
    resolve,
)
from .layouts import (  # noqa: F401 (hf_to_original / original_to_hf re-exported)
    DEIT,
    ORIGINAL,
    config_from_hf,
    config_to_hf,
    drop_ssast_pretraining,
    drop_unused,
    from_ours,
    hf_to_original,
    infer_config,
    is_ssast,
    original_to_hf,
    to_ours,
)

log = logging.getLogger(__name__)

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


def read_checkpoint(source: str | os.PathLike) -> RawCheckpoint:
    """Resolve ``source`` and read it into the original AST naming (no model built)."""
    path = resolve(source)
    published = published_entry(path)
    if path.is_dir():
        return _read_hf_dir(path)
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
        info = ModelInfo.from_dict(meta.get("info") or {})
        if "input_contract" in meta:  # written since the contract exists: it is what the model takes
            info = _with_contract(info, config, InputContract.from_dict(meta["input_contract"]), path)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, ConfigError) as err:
        raise CheckpointError(f"ast-audio checkpoint with a broken config: {err}", path) from None
    return RawCheckpoint(state, FORMAT_NAME, path, config, info)


def _with_contract(info: ModelInfo, config: ASTConfig, contract: InputContract, path: Path) -> ModelInfo:
    """``info`` with the audio, feature and score settings of a saved input contract, which
    must agree with the architecture on the input size."""
    if (contract.num_mel_bins, contract.target_length) != (config.input_fdim, config.input_tdim):
        raise CheckpointError(
            f"the input contract ({contract.target_length} frames x {contract.num_mel_bins} bins) disagrees with "
            f"the model config ({config.input_tdim} x {config.input_fdim})", path,
        )  # fmt: skip
    return info.with_contract(contract)


def _classify(
    state: dict[str, torch.Tensor], path: Path, published: PublishedCheckpoint | None
) -> RawCheckpoint:
    if all(k.startswith("module.") for k in state):
        state = to_ours(state, ORIGINAL, path=path)
    keys = set(state)
    if "v.cls_token" in keys and is_ssast(state):
        return RawCheckpoint(drop_unused(drop_ssast_pretraining(state)), "ssast", path, published=published)
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


def _check_fits(state: dict[str, torch.Tensor], config: ASTConfig, path: Path) -> None:
    """A config (from the file's own JSON) that cannot fit its tensors is refused before a
    model of its size is built: width and depth."""
    token = state.get("v.cls_token")
    if token is not None and token.shape[-1] != config.embed_dim:
        raise CheckpointError(f"the config describes a {config.model_size} model ({config.embed_dim} dims) but "
                              f"the weights have {token.shape[-1]} dims", path)  # fmt: skip
    blocks = {k.split(".")[2] for k in state if k.startswith("v.blocks.")}
    if len(blocks) != config.depth:
        raise CheckpointError(f"the config describes {config.depth} blocks but the weights have {len(blocks)}", path)


def _infer_config(
    raw: RawCheckpoint, *, fstride=None, tstride=None, input_fdim=None, input_tdim=None
) -> tuple[ASTConfig, ModelInfo]:
    """The architecture a checkpoint was trained with: its own config, else inferred from its tensors."""
    if raw.config is not None:
        return raw.config, raw.info or ModelInfo()
    return infer_config(
        raw.state, raw.layout, raw.path, name_hint=name_hint(raw.path, raw.published),
        fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim,
    )  # fmt: skip


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
    src_cfg, _ = _infer_config(raw)
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
    src_cfg, info = _infer_config(raw)
    if src_cfg.depth != cfg.depth:
        raise CheckpointError(
            f"the checkpoint has {src_cfg.depth} blocks but the model has {cfg.depth}", raw.path
        )
    load_state_strict(model.v, _backbone_state(raw.state, src_cfg, cfg, raw.path), raw.path, "v.")
    model.info = replace(model.info, dataset_mean=info.dataset_mean, dataset_std=info.dataset_std)


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
        deit_cfg, _ = _infer_config(raw)
        model = cls(
            label_dim or 527, fstride or 10, tstride or 10, input_fdim or 128, input_tdim or 1024,
            imagenet_pretrain=str(raw.path), model_size=deit_cfg.model_size, verbose=False, depth=deit_cfg.depth,
        )  # fmt: skip
        return model.to(device).eval() if device else model.eval()
    native, info = _infer_config(
        raw, fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim
    )
    _check_fits(raw.state, native, raw.path)
    wanted = native.replace(fstride=fstride, tstride=tstride, input_tdim=input_tdim, input_fdim=input_fdim)
    model = cls.from_config(wanted, _model.missing_statistics(info, raw.path))  # the one policy, once, at load
    load_state_strict(model.v, _backbone_state(raw.state, native, wanted, raw.path), raw.path, "v.")
    head = {k[len("mlp_head.") :]: v for k, v in raw.state.items() if k.startswith("mlp_head.")}
    if raw.layout == "ssast":  # self-supervised: no classifier, the model's fresh head stays
        log.info("%s: SSAST pretraining checkpoint; the %d-output head is new (train it)", raw.path,
                 label_dim or native.label_dim)  # fmt: skip
    elif not head:
        raise CheckpointError("no classification head (mlp_head / classifier) in the checkpoint", raw.path)
    else:
        load_state_strict(model.mlp_head, head, raw.path, "mlp_head.")
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


# The model file does not import this one: the checkpoint code hands it the weight loaders.
_model.provide_weights(init_trunk=init_from_pretrained, load=_load)


# --------------------------------------------------------------------------- our format


def _cpu_state(model: ASTModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(model: ASTModel, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model`` in the self-describing format, atomically.

    ``.safetensors``: weights + JSON metadata (config, info, and the complete input
    contract that :func:`load_model` rebuilds from them, for readers without this
    package, like Hugging Face's ``preprocessor_config.json``). Any other suffix: a
    weights-only torch file ``{"format", "version", "config", "info", "input_contract",
    "state_dict", **extra}``.
    """
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "info": model.info.to_dict(),
        "input_contract": model.input_contract.to_dict(),
    }
    state = _cpu_state(model)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(
            path,
            lambda tmp: save_file(state, str(tmp), metadata={FORMAT_NAME: json.dumps(meta), "format": "pt"}),
        )
    return atomic_write(path, lambda tmp: torch.save({**meta, **(extra or {}), "state_dict": state}, tmp))


def export_original(model: ASTModel, path: str | os.PathLike) -> Path:
    """The original AST layout: a plain state dict with ``module.`` prefixes (as DataParallel saved it)."""
    state = from_ours(_cpu_state(model), ORIGINAL)
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


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
    atomic_write(
        folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )
    for name, data in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        atomic_write(
            folder / name,
            lambda tmp, d=data: tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8"),
        )
    return folder
