"""Reading every checkpoint layout AST users arrive with, safely, and our own format.

Layouts (all converted to the original AST parameter names, ``v.*`` + ``mlp_head.*``):

- ``ast``: the original AST ``.pth`` (``module.`` prefix from DataParallel or not);
- ``deit``: timm / facebookresearch DeiT distilled ImageNet weights (``{"model": sd}`` or sd);
- ``hf``: Hugging Face ``ASTForAudioClassification`` / ``ASTModel``, with the key names of
  transformers 4 (``encoder.layer.N.attention.attention.query``, what the hub files hold)
  or transformers 5 (``layers.N.attention.q_proj``), plus ``config.json``;
- ``ast-audio``: ours, self-describing: a ``.safetensors`` file whose metadata holds the
  config, label names and normalisation stats, or a weights-only torch file holding the
  same as a dict.

Nothing is unpickled beyond tensors and plain containers (``weights_only=True``); a file
with any other pickled object is refused before any of it runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError, DownloadError
from .fileio import atomic_write
from .labels import read_label_csv
from .model import SIZES, ASTConfig, ASTModel, ModelInfo, patch_grid, size_for
from .pos_embed import adapt_pos_embed
from .presets import PRESETS

log = logging.getLogger(__name__)

FORMAT_NAME = "ast-audio"
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PublishedCheckpoint:
    name: str
    url: str
    filename: str
    layout: str  # "ast" or "deit"
    model_size: str = "base384"
    fstride: int = 10
    tstride: int = 10
    dataset: str | None = None
    score: str = ""


_DROPBOX = "https://www.dropbox.com/s/{}/{}?dl=1"
_DEIT = "https://dl.fbaipublicfiles.com/deit/{}"

REGISTRY: dict[str, PublishedCheckpoint] = {}


def register_checkpoint(entry: PublishedCheckpoint) -> None:
    """Add (or replace) a named checkpoint, e.g. to point at a mirror."""
    REGISTRY[entry.name] = entry


for _key, _file, _f, _t, _score in [
    ("ca0b1v2nlxzyeb4", "audioset_10_10_0.4593.pth", 10, 10, "AudioSet eval mAP 0.4593 (weight averaged)"),
    ("1tv0hovue1bxupk", "audioset_10_10_0.4495.pth", 10, 10, "AudioSet eval mAP 0.4495"),
    ("6u5sikl4b9wo4u5", "audioset_10_10_0.4483.pth", 10, 10, "AudioSet eval mAP 0.4483"),
    ("kt6i0v9fvfm1mbq", "audioset_10_10_0.4475.pth", 10, 10, "AudioSet eval mAP 0.4475"),
    ("snfhx3tizr4nuc8", "audioset_12_12_0.4467.pth", 12, 12, "AudioSet eval mAP 0.4467"),
    ("z18s6pemtnxm4k7", "audioset_14_14_0.4431.pth", 14, 14, "AudioSet eval mAP 0.4431"),
    ("mdsa4t1xmcimia6", "audioset_16_16_0.4422.pth", 16, 16, "AudioSet eval mAP 0.4422"),
    ("q0tbqpwv44pquwy", "speechcommands_10_10_0.9812.pth", 10, 10, "Speech Commands V2 accuracy 0.9812"),
]:
    register_checkpoint(
        PublishedCheckpoint(
            name=_file[: -len(".pth")], url=_DROPBOX.format(_key, _file), filename=_file, layout="ast",
            fstride=_f, tstride=_t, dataset=_file.split("_")[0], score=_score,
        )
    )  # fmt: skip
for _size, _file in [
    ("tiny224", "deit_tiny_distilled_patch16_224-b40b3cf7.pth"),
    ("small224", "deit_small_distilled_patch16_224-649709d9.pth"),
    ("base224", "deit_base_distilled_patch16_224-df68dfff.pth"),
    ("base384", "deit_base_distilled_patch16_384-d0272ac0.pth"),
]:
    register_checkpoint(
        PublishedCheckpoint(
            name=_file.split("-")[0], url=_DEIT.format(_file), filename=_file, layout="deit",
            model_size=_size, score="ImageNet DeiT (distilled)",
        )
    )  # fmt: skip

DEFAULT_AUDIOSET = "audioset_10_10_0.4593"
IMAGENET_FOR_SIZE = {e.model_size: e.name for e in REGISTRY.values() if e.layout == "deit"}

_PUBLISHED_NAME = re.compile(r"^(audioset|speechcommands)_(\d+)_(\d+)_[0-9.]+\.pth$")


# --------------------------------------------------------------------------- cache + download


def cache_dir() -> Path:
    """Where named checkpoints live: ``$AST_AUDIO_HOME`` or ``~/.cache/ast-audio``."""
    return Path(os.environ.get("AST_AUDIO_HOME") or Path.home() / ".cache" / "ast-audio")


def _offline() -> bool:
    return os.environ.get("AST_AUDIO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def download(
    url: str, dest: str | os.PathLike, *, progress: bool | None = None, timeout: float = 60.0
) -> Path:
    """Fetch ``url`` into ``dest`` atomically: a temporary file beside it, renamed when complete.

    A transfer that ends early (fewer bytes than announced) or fails leaves nothing behind.
    ``progress=None`` shows a bar only on a terminal.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "ast-audio"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got = 0
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                    disable=(not progress) if progress is not None else None, leave=False,
                ) as bar:  # fmt: skip
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got != total:
                raise DownloadError(f"transfer ended after {got} of {total} bytes", url)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException as err:  # failed, truncated or interrupted (Ctrl-C): never leave a half file
        tmp.unlink(missing_ok=True)
        if isinstance(err, DownloadError) or not isinstance(err, Exception):
            raise
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        else:
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise DownloadError(f"download failed: {reason}", url) from None
    return dest


def resolve(source: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """A local path for ``source``: an existing file or folder, or a registry name (downloaded)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    name = str(source)
    key = name[: -len(".pth")] if name.endswith(".pth") else name
    entry = REGISTRY.get(key)
    if entry is None:
        raise CheckpointError(
            "no such file, and not a known checkpoint name (run `ast-audio checkpoints` for the list)", name
        )
    target = cache_dir() / entry.filename
    if target.exists():
        return target
    if _offline():
        raise DownloadError(
            f"not cached and downloads are off (AST_AUDIO_OFFLINE=1): download {entry.url} and save it as {target}",
            entry.name,
        )
    log.info("downloading %s from %s", entry.name, entry.url)
    try:
        return download(entry.url, target, progress=progress)
    except DownloadError as err:
        raise DownloadError(
            f"{err.reason}; to use it offline, download {entry.url} and save it as {target}", entry.name
        ) from None


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
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
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
    published = next((e for e in REGISTRY.values() if path.name == e.filename), None)
    if path.is_dir():
        return _read_hf_dir(path)
    if path.suffix == ".json":
        return _read_hf_dir(path.parent)
    if path.suffix == ".safetensors":
        state, meta = _safetensors_load(path)
        if FORMAT_NAME in meta:
            return _ours(state, json.loads(meta[FORMAT_NAME]), path)
    else:
        obj = _torch_load(path)
        if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
            return _ours(_only_tensors(obj.get("state_dict"), path), obj, path)
        state = _only_tensors(obj, path)
    return _classify(state, path, published)


def _ours(state: dict[str, torch.Tensor], meta: dict, path: Path) -> RawCheckpoint:
    try:
        config = ASTConfig.from_dict(meta["config"])
        info = ModelInfo.from_dict(meta.get("info", {}))
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"ast-audio checkpoint with a broken config: {err}", path) from None
    return RawCheckpoint(state, FORMAT_NAME, path, config, info)


def _classify(
    state: dict[str, torch.Tensor], path: Path, published: PublishedCheckpoint | None
) -> RawCheckpoint:
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    keys = set(state)
    if "v.cls_token" in keys:
        # v.head / v.head_dist: the DeiT ImageNet heads, carried along unused by the original
        state = {k: v for k, v in state.items() if not k.startswith(("v.head.", "v.head_dist."))}
        return RawCheckpoint(state, "ast", path, published=published)
    if "cls_token" in keys and "dist_token" in keys:
        state = {f"v.{k}": v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
        return RawCheckpoint(state, "deit", path, published=published)
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


_HF_V4 = [  # regex on the key without the model prefix -> original name
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"v.blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"v.blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"v.blocks.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"v.blocks.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"v.blocks.\1.norm2."),
    (r"layers\.(\d+)\.attention\.o_proj\.", r"v.blocks.\1.attn.proj."),
    (r"layers\.(\d+)\.mlp\.fc1\.", r"v.blocks.\1.mlp.fc1."),
    (r"layers\.(\d+)\.mlp\.fc2\.", r"v.blocks.\1.mlp.fc2."),
    (r"layers\.(\d+)\.layernorm_before\.", r"v.blocks.\1.norm1."),
    (r"layers\.(\d+)\.layernorm_after\.", r"v.blocks.\1.norm2."),
    (r"embeddings\.cls_token$", "v.cls_token"),
    (r"embeddings\.distillation_token$", "v.dist_token"),
    (r"embeddings\.position_embeddings$", "v.pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "v.patch_embed.proj."),
    (r"layernorm\.", "v.norm."),
    (r"classifier\.layernorm\.", "mlp_head.0."),
    (r"classifier\.dense\.", "mlp_head.1."),
]
_HF_QKV = re.compile(
    r"(?:encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)|layers\.(\d+)\.attention\.([qkv])_proj)\.(weight|bias)$"
)
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def hf_to_original(
    state: dict[str, torch.Tensor], path: str | os.PathLike = "<state dict>"
) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face AST state dict (transformers 4 or 5 names) to the original's."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], list] = {}
    for key, tensor in state.items():
        short = key.removeprefix("audio_spectrogram_transformer.")
        match = _HF_QKV.fullmatch(short)
        if match:
            layer = int(match.group(1) or match.group(3))
            part = _QKV_ORDER[match.group(2) or match.group(4)]
            qkv.setdefault((layer, match.group(5)), [None, None, None])[part] = tensor
            continue
        for pattern, repl in _HF_V4:
            new, n = re.subn("^" + pattern, repl, short)
            if n:
                out[new] = tensor
                break
        else:
            raise CheckpointError(f"unexpected parameter {key!r} for a Hugging Face AST model", path)
    for (layer, kind), parts in sorted(qkv.items()):
        if any(p is None for p in parts):
            raise CheckpointError(f"layer {layer} lacks one of query/key/value {kind}", path)
        out[f"v.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def original_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_original`, in the transformers 4 names the hub files use."""
    out: dict[str, torch.Tensor] = {}
    p = "audio_spectrogram_transformer."
    simple = {
        "v.cls_token": p + "embeddings.cls_token",
        "v.dist_token": p + "embeddings.distillation_token",
        "v.pos_embed": p + "embeddings.position_embeddings",
    }
    sub = [
        (r"v\.patch_embed\.proj\.", p + "embeddings.patch_embeddings.projection."),
        (r"v\.blocks\.(\d+)\.attn\.proj\.", p + r"encoder.layer.\1.attention.output.dense."),
        (r"v\.blocks\.(\d+)\.mlp\.fc1\.", p + r"encoder.layer.\1.intermediate.dense."),
        (r"v\.blocks\.(\d+)\.mlp\.fc2\.", p + r"encoder.layer.\1.output.dense."),
        (r"v\.blocks\.(\d+)\.norm1\.", p + r"encoder.layer.\1.layernorm_before."),
        (r"v\.blocks\.(\d+)\.norm2\.", p + r"encoder.layer.\1.layernorm_after."),
        (r"v\.norm\.", p + "layernorm."),
        (r"mlp_head\.0\.", "classifier.layernorm."),
        (r"mlp_head\.1\.", "classifier.dense."),
    ]
    for key, tensor in state.items():
        match = re.fullmatch(r"v\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if match:
            for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                out[f"{p}encoder.layer.{match.group(1)}.attention.attention.{name}.{match.group(2)}"] = (
                    part.clone()
                )
            continue
        if key in simple:
            out[simple[key]] = tensor
            continue
        for pattern, repl in sub:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = tensor
                break
        else:
            raise CheckpointError(f"unexpected parameter {key!r} for an AST model")
    return out


def _hf_checkpoint(state: dict[str, torch.Tensor], path: Path, hf: dict | None) -> RawCheckpoint:
    state = hf_to_original(state, path)
    if hf is None:
        return RawCheckpoint(state, "hf", path)
    try:
        dim, heads = int(hf.get("hidden_size", 768)), int(hf.get("num_attention_heads", 12))
        if int(hf.get("intermediate_size", 4 * dim)) != 4 * dim or int(hf.get("patch_size", 16)) != 16:
            raise ConfigError("only MLP ratio 4 and 16x16 patches are AST models")
        if hf.get("hidden_act", "gelu") != "gelu" or not hf.get("qkv_bias", True):
            raise ConfigError("only exact GELU and biased q/k/v projections are AST models")
        config = ASTConfig(
            label_dim=state["mlp_head.1.weight"].shape[0]
            if "mlp_head.1.weight" in state
            else len(hf.get("id2label") or {}) or 527,
            fstride=int(hf.get("frequency_stride", 10)),
            tstride=int(hf.get("time_stride", 10)),
            input_fdim=int(hf.get("num_mel_bins", 128)),
            input_tdim=int(hf.get("max_length", 1024)),
            model_size=size_for(dim, heads),
            depth=int(hf.get("num_hidden_layers", 12)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        )
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"config.json does not describe an AST model: {err}", path) from None
    info = ModelInfo()
    id2label = hf.get("id2label") or {}
    if id2label and len(id2label) == config.label_dim:
        info.labels = [
            str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(config.label_dim)
        ]
    problem = hf.get("problem_type")
    info.multilabel = problem != "single_label_classification"
    pre = path.parent / "preprocessor_config.json"
    if pre.exists():
        pre_cfg = _read_json(pre)
        if "mean" in pre_cfg and "std" in pre_cfg:
            info.dataset_mean, info.dataset_std = float(pre_cfg["mean"]), float(pre_cfg["std"])
        info.sample_rate = int(pre_cfg.get("sampling_rate", 16000))
    if config.label_dim == 527 and info.dataset_mean is None:
        info.dataset_mean, info.dataset_std = PRESETS["audioset"].mean, PRESETS["audioset"].std
    return RawCheckpoint(state, "hf", path, config, info)


# --------------------------------------------------------------------------- architecture inference


def _infer_config(
    raw: RawCheckpoint, *, fstride=None, tstride=None, input_fdim=None, input_tdim=None
) -> tuple[ASTConfig, ModelInfo]:
    """The architecture a checkpoint was trained with (its *native* config)."""
    if raw.config is not None:
        return raw.config, raw.info or ModelInfo()
    state, path = raw.state, raw.path
    for key in ("v.cls_token", "v.pos_embed", "v.patch_embed.proj.weight"):
        if key not in state:
            raise CheckpointError(f"missing parameter {key!r}", path)
    dim = state["v.cls_token"].shape[-1]
    model_size = size_for(dim)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"v\.blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    if depth < 1 or blocks != set(range(depth)):
        raise CheckpointError(
            f"transformer blocks are not numbered 0..N-1 (found {sorted(blocks)[:5]}...)", path
        )
    n_patches = state["v.pos_embed"].shape[1] - 2

    # Where the strides come from: the published name, else the arguments, else 10/10.
    dataset = None
    named = _PUBLISHED_NAME.match(path.name)
    if raw.published is not None and raw.published.layout == "ast":
        dataset, native_f, native_t = raw.published.dataset, raw.published.fstride, raw.published.tstride
    elif named:
        dataset, native_f, native_t = named.group(1), int(named.group(2)), int(named.group(3))
    else:
        native_f, native_t = fstride or 10, tstride or 10
    label_dim = state["mlp_head.1.weight"].shape[0] if "mlp_head.1.weight" in state else 527
    if dataset is None and label_dim == 527:
        dataset = "audioset"
    defaults = PRESETS.get(dataset)
    fdim = input_fdim or 128

    if raw.layout == "deit":
        side = int(round(n_patches**0.5))
        if side * side != n_patches:
            raise CheckpointError(f"a DeiT position grid must be square; {n_patches} positions are not", path)
        if dim == 768 and side == SIZES["base224"].imagenet_grid:
            model_size = "base224"
        return ASTConfig(label_dim, 16, 16, side * 16, side * 16, model_size, depth), ModelInfo()

    f_dim = patch_grid(fdim, 16, native_f, native_t)[0]
    if n_patches % f_dim:
        raise CheckpointError(
            f"{n_patches} patch positions do not fit {f_dim} frequency rows (input_fdim={fdim}, fstride={native_f}); "
            "pass the fstride/input_fdim it was trained with",
            path,
        )
    t_dim = n_patches // f_dim
    tdim = defaults.target_length if defaults else None
    if tdim is None or patch_grid(fdim, tdim, native_f, native_t)[1] != t_dim:
        if input_tdim is not None and patch_grid(fdim, input_tdim, native_f, native_t)[1] == t_dim:
            tdim = input_tdim
        else:
            tdim = (t_dim - 1) * native_t + 16
    config = ASTConfig(label_dim, native_f, native_t, fdim, tdim, model_size, depth)
    info = ModelInfo()
    if defaults is not None:
        table = read_label_csv(defaults.label_table)
        if len(table) == label_dim:
            info.labels, info.label_ids = table.names, table.mids
        info.dataset_mean, info.dataset_std, info.multilabel = (
            defaults.mean,
            defaults.std,
            defaults.multilabel,
        )
    return config, info


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
    if raw.layout == "deit":
        raise CheckpointError("this is an ImageNet DeiT file; pass it as imagenet_pretrain", raw.path)
    src_cfg, info = _infer_config(raw)
    if src_cfg.depth != cfg.depth:
        raise CheckpointError(
            f"the checkpoint has {src_cfg.depth} blocks but the model has {cfg.depth}", raw.path
        )
    load_state_strict(model.v, _backbone_state(raw.state, src_cfg, cfg, raw.path), raw.path, "v.")
    model.info = replace(model.info, dataset_mean=info.dataset_mean, dataset_std=info.dataset_std)


def load_model(
    source: str | os.PathLike,
    *,
    label_dim: int | None = None,
    fstride: int | None = None,
    tstride: int | None = None,
    input_tdim: int | None = None,
    input_fdim: int | None = None,
    device: str | torch.device | None = None,
) -> ASTModel:
    """A ready :class:`ASTModel` (in eval mode) from any checkpoint users arrive with.

    ``source`` is a file, a Hugging Face model folder, or a published name (see
    :data:`REGISTRY`; downloaded into :func:`cache_dir` once). For an original ``.pth``
    the strides and length it was trained with come from its published file name
    (``audioset_{f}_{t}_{score}.pth``), else from the arguments, else 10/10 and the
    dataset's length. Other arguments that differ from the checkpoint's adapt it: a new
    ``input_tdim`` / strides re-grid the position embedding (cut or interpolate), a new
    ``label_dim`` puts a fresh head on top.
    """
    raw = read_checkpoint(source)
    if raw.layout == "deit":
        deit_cfg, _ = _infer_config(raw)
        model = ASTModel(
            label_dim or 527, fstride or 10, tstride or 10, input_fdim or 128, input_tdim or 1024,
            imagenet_pretrain=str(raw.path), model_size=deit_cfg.model_size, verbose=False, depth=deit_cfg.depth,
        )  # fmt: skip
        return model.to(device).eval() if device else model.eval()
    native, info = _infer_config(
        raw, fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim
    )
    wanted = native.replace(fstride=fstride, tstride=tstride, input_tdim=input_tdim, input_fdim=input_fdim)
    model = ASTModel.from_config(wanted, info)
    load_state_strict(model.v, _backbone_state(raw.state, native, wanted, raw.path), raw.path, "v.")
    head = {k[len("mlp_head.") :]: v for k, v in raw.state.items() if k.startswith("mlp_head.")}
    if not head:
        raise CheckpointError("no classification head (mlp_head / classifier) in the checkpoint", raw.path)
    load_state_strict(model.mlp_head, head, raw.path, "mlp_head.")
    if label_dim is not None and label_dim != native.label_dim:
        log.info(
            "%s: new %d-class head in place of the checkpoint's %d classes",
            raw.path,
            label_dim,
            native.label_dim,
        )
        model.new_head(label_dim)
    if device is not None:
        model.to(device)
    return model.eval()


# --------------------------------------------------------------------------- our format


def _cpu_state(model: ASTModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(model: ASTModel, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model`` in the self-describing format, atomically.

    ``.safetensors``: weights + JSON metadata (config, info). Any other suffix: a
    weights-only torch file ``{"format", "version", "config", "info", "state_dict", **extra}``.
    """
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "info": model.info.to_dict(),
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
    state = {f"module.{k}": v for k, v in _cpu_state(model).items()}
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def export_hf(model: ASTModel, folder: str | os.PathLike) -> Path:
    """A Hugging Face ``ASTForAudioClassification`` folder (config.json, model.safetensors,
    preprocessor_config.json), loadable by transformers' ``from_pretrained``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    cfg, info = model.config, model.info
    labels = info.labels or [f"LABEL_{i}" for i in range(cfg.label_dim)]
    config = {
        "architectures": ["ASTForAudioClassification"],
        "model_type": "audio-spectrogram-transformer",
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": 4 * cfg.embed_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.layer_norm_eps,
        "patch_size": 16,
        "qkv_bias": True,
        "frequency_stride": cfg.fstride,
        "time_stride": cfg.tstride,
        "max_length": cfg.input_tdim,
        "num_mel_bins": cfg.input_fdim,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": "multi_label_classification" if info.multilabel else "single_label_classification",
    }
    preprocessor = {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "num_mel_bins": cfg.input_fdim,
        "max_length": cfg.input_tdim,
        "sampling_rate": info.sample_rate,
        "padding_value": 0.0,
        "do_normalize": info.dataset_mean is not None,
        "mean": info.dataset_mean,
        "std": info.dataset_std,
        "return_attention_mask": False,
    }
    state = original_to_hf(_cpu_state(model))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
    )
    for name, data in (("config.json", config), ("preprocessor_config.json", preprocessor)):
        atomic_write(
            folder / name,
            lambda tmp, d=data: tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8"),
        )
    return folder
