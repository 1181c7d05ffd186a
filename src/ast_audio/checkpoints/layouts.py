"""The foreign checkpoint layouts as data: one table of key renames per layout, read both ways.

Our parameter names are the original AST's (``v.blocks.N.attn.qkv.weight``,
``mlp_head.1.weight``). Each foreign layout is a :class:`Layout`: a list of :class:`Rule`
pairs ``(ours, theirs)``. The same table renames their keys to ours (:func:`to_ours`,
reading) and ours to theirs (:func:`from_ours`, exporting), so the two directions cannot
drift apart. A name is a template: ``{n}`` stands for a block number, and a name ending
in ``.`` (or empty) is a prefix that the rest of the key (``weight``, ``bias``) follows.
A rule whose ``theirs`` is a tuple splits our tensor into equal parts along dim 0 (our
fused ``qkv`` against Hugging Face's separate query, key and value).

Layouts: ``ast`` (the original ``.pth``, saved through DataParallel: ``module.``),
``deit`` (timm / facebookresearch DeiT: no ``v.``), ``hf`` (Hugging Face transformers 4,
the names the hub files hold) and ``hf5`` (transformers 5's in-memory names). SSAST's
self-supervised checkpoints (Gong et al., AAAI 2022) are the ``ast`` names plus pretraining
parts that fine-tuning drops (:data:`SSAST_PRETRAINING`) and the input size they were
pretrained on (``p_input_fdim`` / ``p_input_tdim``); :func:`infer_config` reads them. Also here:
the Hugging Face ``config.json`` <-> :class:`~ast_audio.model.config.ASTConfig` mapping and the
architecture implied by a state dict in our names (:func:`infer_config`).

Over 400 lines because a layout's key table, its config mapping and the checks that refuse
a malformed foreign config before anything is allocated are read together when a layout is
added or changed; split apart, the two directions of one layout would live in two files.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import cached_property

import torch

from ..base.checks import is_number
from ..data.labels import read_label_csv
from ..errors import CheckpointError, ConfigError
from ..features.contract import InputContract
from ..features.presets import PRESETS
from ..model.config import SIZES, ASTConfig, patch_grid, size_for
from ..model.info import ModelInfo


@dataclass(frozen=True)
class Rule:
    """``ours`` <-> ``theirs`` (templates; a tuple ``theirs`` = our tensor split along dim 0)."""

    ours: str
    theirs: str | tuple[str, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        return self.theirs if isinstance(self.theirs, tuple) else (self.theirs,)

    @staticmethod
    def _compile(template: str) -> re.Pattern:
        pattern = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)")
        if template == "" or template.endswith("."):
            pattern += r"(?P<rest>.+)"
        return re.compile(pattern)

    @cached_property
    def ours_re(self) -> re.Pattern:
        return self._compile(self.ours)

    @cached_property
    def theirs_re(self) -> tuple[re.Pattern, ...]:
        return tuple(self._compile(t) for t in self.parts)


def _fill(template: str, match: re.Match) -> str:
    groups = match.groupdict()
    name = template.replace("{n}", groups.get("n") or "")
    return name + (groups.get("rest") or "")


@dataclass(frozen=True)
class Layout:
    name: str
    rules: tuple[Rule, ...]
    description: str = ""


_HF = "audio_spectrogram_transformer."
_HF_EMBEDDINGS_AND_HEAD = (
    Rule("v.cls_token", _HF + "embeddings.cls_token"),
    Rule("v.dist_token", _HF + "embeddings.distillation_token"),
    Rule("v.pos_embed", _HF + "embeddings.position_embeddings"),
    Rule("v.patch_embed.proj.", _HF + "embeddings.patch_embeddings.projection."),
    Rule("v.norm.", _HF + "layernorm."),
    Rule("mlp_head.0.", "classifier.layernorm."),
    Rule("mlp_head.1.", "classifier.dense."),
)
_V4 = _HF + "encoder.layer.{n}."
_V5 = _HF + "layers.{n}."

HF = Layout(
    "hf",
    _HF_EMBEDDINGS_AND_HEAD
    + (
        Rule("v.blocks.{n}.norm1.", _V4 + "layernorm_before."),
        Rule(
            "v.blocks.{n}.attn.qkv.",
            tuple(_V4 + f"attention.attention.{p}." for p in ("query", "key", "value")),
        ),
        Rule("v.blocks.{n}.attn.proj.", _V4 + "attention.output.dense."),
        Rule("v.blocks.{n}.norm2.", _V4 + "layernorm_after."),
        Rule("v.blocks.{n}.mlp.fc1.", _V4 + "intermediate.dense."),
        Rule("v.blocks.{n}.mlp.fc2.", _V4 + "output.dense."),
    ),
    "Hugging Face ASTForAudioClassification, transformers 4 names (the hub files)",
)
HF5 = Layout(
    "hf5",
    _HF_EMBEDDINGS_AND_HEAD
    + (
        Rule("v.blocks.{n}.norm1.", _V5 + "layernorm_before."),
        Rule("v.blocks.{n}.attn.qkv.", tuple(_V5 + f"attention.{p}_proj." for p in "qkv")),
        Rule("v.blocks.{n}.attn.proj.", _V5 + "attention.o_proj."),
        Rule("v.blocks.{n}.norm2.", _V5 + "layernorm_after."),
        Rule("v.blocks.{n}.mlp.fc1.", _V5 + "mlp.fc1."),
        Rule("v.blocks.{n}.mlp.fc2.", _V5 + "mlp.fc2."),
    ),
    "Hugging Face ASTForAudioClassification, transformers 5 in-memory names",
)
ORIGINAL = Layout("ast", (Rule("", "module."),), "original AST .pth, saved through DataParallel")
DEIT = Layout("deit", (Rule("v.", ""),), "timm / facebookresearch DeiT distilled ImageNet weights")
LAYOUTS = {layout.name: layout for layout in (ORIGINAL, DEIT, HF, HF5)}

# The DeiT ImageNet heads (in our names): unused by AST, carried along in the original files.
UNUSED = ("v.head.", "v.head_dist.")
# SSAST's pretraining parts (prediction heads, mask token; fine-tuning drops them) and input size.
SSAST_PRETRAINING = ("cpredlayer.", "gpredlayer.", "mask_embed")
SSAST_INPUT = ("p_input_fdim", "p_input_tdim")

StateDict = dict[str, torch.Tensor]


def to_ours(
    state: StateDict, *layouts: Layout, path: str | os.PathLike = "<state dict>", what: str = "an AST model"
) -> StateDict:
    """Rename ``state`` from ``layouts`` (the first rule that matches a key wins) to our names."""
    rules = [rule for layout in layouts for rule in layout.rules]
    out: StateDict = {}
    split: dict[tuple[Rule, str], list] = {}
    for key, tensor in state.items():
        for rule in rules:
            match = next(((i, m) for i, p in enumerate(rule.theirs_re) if (m := p.fullmatch(key))), None)
            if match is None:
                continue
            part, m = match
            name = _fill(rule.ours, m)
            if len(rule.parts) == 1:
                out[name] = tensor
            else:
                split.setdefault((rule, name), [None] * len(rule.parts))[part] = tensor
            break
        else:
            raise CheckpointError(f"unexpected parameter {key!r} for {what}", path)
    for (rule, name), parts in split.items():
        if any(p is None for p in parts):
            missing = [
                _fill(rule.parts[i], rule.ours_re.fullmatch(name)) for i, p in enumerate(parts) if p is None
            ]
            raise CheckpointError(f"{name!r} needs {missing[0]!r}, which is missing", path)
        out[name] = torch.cat(parts, dim=0)
    return out


def from_ours(state: StateDict, layout: Layout) -> StateDict:
    """Rename ``state`` (our names) to ``layout``'s, splitting fused tensors where it keeps them apart."""
    out: StateDict = {}
    for key, tensor in state.items():
        for rule in layout.rules:
            m = rule.ours_re.fullmatch(key)
            if m is None:
                continue
            if len(rule.parts) == 1:
                out[_fill(rule.theirs, m)] = tensor
            else:
                for template, part in zip(rule.parts, tensor.chunk(len(rule.parts), dim=0), strict=True):
                    out[_fill(template, m)] = part.clone()
            break
        else:
            raise CheckpointError(f"unexpected parameter {key!r} for {layout.description}")
    return out


def drop_unused(state: StateDict) -> StateDict:
    return {k: v for k, v in state.items() if not k.startswith(UNUSED)}


def is_ssast(state: StateDict) -> bool:
    """An SSAST pretraining checkpoint (in our names): it records its pretraining input size."""
    return all(k in state for k in SSAST_INPUT)


def drop_ssast_pretraining(state: StateDict) -> StateDict:
    return {k: v for k, v in state.items() if not k.startswith(SSAST_PRETRAINING)}


def hf_to_original(state: StateDict, path: str | os.PathLike = "<state dict>") -> StateDict:
    """Rename a Hugging Face AST state dict (transformers 4 or 5 names; with the
    ``audio_spectrogram_transformer.`` prefix or, for its bare ``ASTModel``, without) to ours."""
    full = {k if k.startswith((_HF, "classifier.")) else _HF + k: v for k, v in state.items()}
    return to_ours(full, HF, HF5, path=path, what="a Hugging Face AST model")


def original_to_hf(state: StateDict) -> StateDict:
    """The inverse of :func:`hf_to_original`, in the transformers 4 names the hub files use."""
    return from_ours(state, HF)


# --------------------------------------------------------------------------- Hugging Face config


def _finite(value: object, name: str) -> float:
    """A statistic of ``preprocessor_config.json`` as a finite float."""
    if not is_number(value) or not math.isfinite(value):
        raise ConfigError(f"preprocessor_config.json: {name} must be a finite number, got {value!r}"[:200])
    return float(value)


def config_from_hf(
    hf: dict, state: StateDict, preprocessor: dict | None = None
) -> tuple[ASTConfig, ModelInfo]:
    """Our config and info from a Hugging Face ``config.json`` (and ``preprocessor_config.json``).

    Raises :class:`ConfigError` (or ``TypeError``/``ValueError`` on malformed values) when
    the config does not describe an AST model.
    """
    if not isinstance(hf, dict):
        raise ConfigError(f"config.json is a JSON {type(hf).__name__}, not an object")
    dim, heads = int(hf.get("hidden_size", 768)), int(hf.get("num_attention_heads", 12))
    if int(hf.get("intermediate_size", 4 * dim)) != 4 * dim or int(hf.get("patch_size", 16)) != 16:
        raise ConfigError("only MLP ratio 4 and 16x16 patches are AST models")
    if hf.get("hidden_act", "gelu") != "gelu" or not hf.get("qkv_bias", True):
        raise ConfigError("only exact GELU and biased q/k/v projections are AST models")
    head = state.get("mlp_head.1.weight")
    config = ASTConfig(
        label_dim=head.shape[0] if head is not None else len(hf.get("id2label") or {}) or 527,
        fstride=int(hf.get("frequency_stride", 10)),
        tstride=int(hf.get("time_stride", 10)),
        input_fdim=int(hf.get("num_mel_bins", 128)),
        input_tdim=int(hf.get("max_length", 1024)),
        model_size=size_for(dim, heads),
        depth=int(hf.get("num_hidden_layers", 12)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )
    labels = None
    id2label = hf.get("id2label") or {}
    if id2label and len(id2label) == config.label_dim:
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(config.label_dim)]
        if labels == [f"LABEL_{i}" for i in range(config.label_dim)]:  # transformers' placeholders: no names
            labels = None
    single = hf.get("problem_type") == "single_label_classification"
    contract = {"activation": "softmax" if single else "sigmoid"}
    stats = None
    if preprocessor is not None:
        if not isinstance(preprocessor, dict):
            raise ConfigError("preprocessor_config.json is not a JSON object")
        mean, std = preprocessor.get("mean"), preprocessor.get("std")
        if mean is not None and std is not None:  # null: written for a model without statistics
            stats = _finite(mean, "mean"), _finite(std, "std")
            if stats[1] <= 0:
                raise ConfigError(f"preprocessor_config.json: std must be positive, got {std!r}")
        contract["sample_rate"] = int(preprocessor.get("sampling_rate", 16000))
    if config.label_dim == 527 and stats is None:
        stats = PRESETS["audioset"].mean, PRESETS["audioset"].std
    if stats is not None:
        contract.update(mean=stats[0], std=stats[1])
    return config, ModelInfo(labels=labels, contract=InputContract(**contract), statistics=stats is not None)


def require_plain_ast(cfg: ASTConfig, layout: str) -> None:
    """The original and Hugging Face layouts hold AST as published: a head over the cls and dist
    tokens and nothing beside it. A model pooling its patch tokens, or with a clip-statistics
    branch, would load there as another function, so it is refused."""
    if cfg.pool != "cls":
        raise CheckpointError(f"a model with pool={cfg.pool!r} has no {layout} form (its head pools the cls and "
                              "dist tokens); export it as a safetensors checkpoint or ONNX")  # fmt: skip
    if cfg.clip_stats:
        raise CheckpointError(f"a model with a clip-statistics branch has no {layout} form (it has no such "
                              "branch); export it as a safetensors checkpoint or ONNX")  # fmt: skip


def config_to_hf(cfg: ASTConfig, info: ModelInfo) -> tuple[dict, dict]:
    """``config.json`` and ``preprocessor_config.json`` of a Hugging Face ``ASTForAudioClassification``
    (:func:`require_plain_ast`)."""
    require_plain_ast(cfg, "Hugging Face")
    labels = info.labels or [f"LABEL_{i}" for i in range(cfg.label_dim)]
    contract, stats = info.contract, info.statistics
    multilabel = contract.activation == "sigmoid"
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
        "problem_type": "multi_label_classification" if multilabel else "single_label_classification",
    }
    preprocessor = {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "num_mel_bins": cfg.input_fdim,
        "max_length": cfg.input_tdim,
        "sampling_rate": contract.sample_rate,
        "padding_value": 0.0,
        "do_normalize": stats,
        "mean": contract.mean if stats else None,
        "std": contract.std if stats else None,
        "return_attention_mask": False,
    }
    return config, preprocessor


# --------------------------------------------------------------------------- architecture inference


def infer_config(
    state: StateDict,
    layout: str,
    path: str | os.PathLike,
    *,
    name_hint: tuple[str | None, int, int] | None = None,
    fstride: int | None = None,
    input_fdim: int | None = None,
    input_tdim: int | None = None,
    tstride: int | None = None,
) -> tuple[ASTConfig, ModelInfo]:
    """The architecture a state dict in our names was trained with (its *native* config).

    ``name_hint`` is ``(dataset, fstride, tstride)`` from a published file name
    (:func:`ast_audio.checkpoints.hub.name_hint`); without it the strides come from the arguments,
    else 10/10. The length is the dataset's when its grid fits, else ``input_tdim`` when
    that fits, else the shortest length giving the grid's columns.
    """
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
    if layout == "ssast":
        return _ssast_config(state, path, model_size, depth, n_patches)

    if name_hint is not None:
        dataset, native_f, native_t = name_hint
    else:
        dataset, native_f, native_t = None, fstride or 10, tstride or 10
    label_dim = state["mlp_head.1.weight"].shape[0] if "mlp_head.1.weight" in state else 527
    if dataset is None and label_dim == 527:
        dataset = "audioset"
    defaults = PRESETS.get(dataset)
    fdim = input_fdim or 128

    if layout == "deit":
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
    if defaults is None:
        return config, ModelInfo()
    table = read_label_csv(defaults.label_table)
    names, mids = (table.names, table.mids) if len(table) == label_dim else (None, None)
    activation = "sigmoid" if defaults.multilabel else "softmax"
    contract = InputContract(mean=defaults.mean, std=defaults.std, activation=activation)
    return config, ModelInfo(labels=names, label_ids=mids, contract=contract)


def _ssast_config(
    state: StateDict, path: str | os.PathLike, model_size: str, depth: int, n_patches: int
) -> tuple[ASTConfig, ModelInfo]:
    """The pretraining architecture of an SSAST checkpoint: its patches were cut without
    overlap (stride = patch), on the input size it records. It has no classifier: the
    config's 527 outputs are a placeholder for the fresh head that loading puts on."""
    kernel = tuple(state["v.patch_embed.proj.weight"].shape[-2:])
    if kernel != (16, 16):
        raise CheckpointError(
            f"an SSAST checkpoint with {kernel[0]}x{kernel[1]} patches (frame-based SSAST) is not supported: "
            "the model cuts 16x16 patches only; use a patch-based SSAST checkpoint", path,
        )  # fmt: skip
    if "v.dist_token" not in state:
        raise CheckpointError(
            "an SSAST checkpoint with one class token (model_size base_nokd) is not supported: "
            "AST pools a cls and a dist token", path,
        )  # fmt: skip
    fdim, tdim = int(state["p_input_fdim"].item()), int(state["p_input_tdim"].item())
    config = ASTConfig(527, 16, 16, max(fdim, 16), max(tdim, 16), model_size, depth)
    if config.num_patches != n_patches:
        raise CheckpointError(
            f"{n_patches} patch positions do not fit the {config.grid[0]}x{config.grid[1]} grid of its pretraining "
            f"input ({fdim} bins x {tdim} frames, 16x16 patches without overlap)", path,
        )  # fmt: skip
    # SSAST was pretrained on AudioSet + Librispeech with AudioSet's statistics (the contract's defaults)
    return config, ModelInfo(contract=InputContract(), extra={"pretraining": "ssast"})
