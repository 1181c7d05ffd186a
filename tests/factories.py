"""What the tests build: real audio (signals and the one set of writers, bad files too),
tiny models and checkpoints, state dicts in the exact published layouts, the toy dataset.

Fixtures over these (``files``, ``checkpoints``, ``folder``) and the CLI runner are in
``conftest.py``; datasets in their authors' layouts are in ``layouts.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ast_audio import ASTConfig, ASTModel, ModelInfo, save_checkpoint
from ast_audio.features.presets import PRESETS

SR = 16000
MEAN, STD = PRESETS["audioset"].mean, PRESETS["audioset"].std

# --------------------------------------------------------------------------- audio: signals


def tone(
    freq: float, sample_rate: int = SR, seconds: float = 1.0, amplitude: float = 0.5, rng=None
) -> np.ndarray:
    """A sine at ``freq``; with ``rng`` a random take of it instead: level 0.1-0.4, pitch
    within 5 %, any phase, plus a little noise."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    if rng is None:
        return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    x = rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * freq * rng.uniform(0.95, 1.05) * t + rng.uniform(0, 6.28))
    return (x + 0.01 * rng.standard_normal(t.size)).astype("float32")


def noise(seconds: float, level: float = 0.1, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(level * rng.standard_normal(int(seconds * sample_rate)), -1, 1).astype(np.float32)


def chirp(seconds: float, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32)


# --------------------------------------------------------------------------- audio: writers


def write_audio(path, data, sample_rate: int = SR, **kwargs) -> Path:
    """A real audio file (``soundfile.write``: format from the suffix unless ``format=``; ``subtype=``)."""
    sf.write(path, data, sample_rate, **kwargs)
    return Path(path)


def write_empty(path) -> Path:
    """A 0-byte file under an audio name."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_as_audio(path, text: str = "this is a text file, not audio\n") -> Path:
    path = Path(path)
    path.write_text(text)
    return path


def write_truncated_wav(path, x: np.ndarray, sample_rate: int) -> Path:
    """A 16-bit wav cut in the middle of its data (the header announces more)."""
    write_audio(path, x, sample_rate, subtype="PCM_16")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def write_truncated_mp3(path, x: np.ndarray, sample_rate: int) -> Path:
    """An mp3 cut mid-stream (60 % of its bytes)."""
    write_audio(path, x, sample_rate, format="MP3")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) * 6 // 10])
    return Path(path)


# --------------------------------------------------------------------------- models and checkpoints


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its init (LayerNorms off 1/0, biases off 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


def tiny_ast(label_dim=5, fstride=10, tstride=10, input_fdim=128, input_tdim=128, depth=2, seed=0) -> ASTModel:
    torch.manual_seed(seed)
    model = ASTModel(
        label_dim, fstride, tstride, input_fdim, input_tdim,
        imagenet_pretrain=False, model_size="tiny224", verbose=False, depth=depth,
    )  # fmt: skip
    return perturb(model, seed=seed).eval()


def hf_model(fstride=10, tstride=10, max_length=128, num_labels=5, eps=1e-6, depth=2, seed=0):
    """A tiny transformers ``ASTForAudioClassification`` (the reference of the HF layouts)."""
    from transformers import ASTConfig as HFConfig
    from transformers import ASTForAudioClassification

    torch.manual_seed(seed)
    cfg = HFConfig(
        hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=depth,
        frequency_stride=fstride, time_stride=tstride, max_length=max_length, num_mel_bins=128,
        num_labels=num_labels, layer_norm_eps=eps, id2label={i: f"class {i}" for i in range(num_labels)},
        label2id={f"class {i}": i for i in range(num_labels)},
    )  # fmt: skip
    return perturb(ASTForAudioClassification(cfg), seed=seed).eval()


def deit_state(model_size_dim=192, side=14, depth=2, seed=0) -> dict[str, torch.Tensor]:
    """A DeiT distilled ImageNet state dict in timm's layout (RGB patch projection, heads)."""
    gen = torch.Generator().manual_seed(seed)
    d = model_size_dim

    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.05

    sd = {
        "cls_token": r(1, 1, d),
        "dist_token": r(1, 1, d),
        "pos_embed": r(1, side * side + 2, d),
        "patch_embed.proj.weight": r(d, 3, 16, 16),
        "patch_embed.proj.bias": r(d),
        "norm.weight": 1 + r(d),
        "norm.bias": r(d),
        "head.weight": r(1000, d),
        "head.bias": r(1000),
        "head_dist.weight": r(1000, d),
        "head_dist.bias": r(1000),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
            p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
            p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
            p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d),
        })  # fmt: skip
    return sd


def original_audioset_state(depth=2, label_dim=527, seed=1) -> dict[str, torch.Tensor]:
    """An original-AST AudioSet checkpoint (12x101 grid at 10/10): ``module.`` prefix and
    the unused DeiT heads, exactly as the published ``.pth`` files hold them."""
    model = tiny_ast(label_dim=label_dim, input_tdim=1024, depth=depth, seed=seed)
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["module.v.head.weight"] = torch.zeros(1000, 192)
    sd["module.v.head.bias"] = torch.zeros(1000)
    sd["module.v.head_dist.weight"] = torch.zeros(1000, 192)
    sd["module.v.head_dist.bias"] = torch.zeros(1000)
    return sd


def ssast_state(
    dim: int = 192, depth: int = 2, patch: tuple[int, int] = (16, 16), input_fdim: int = 128, input_tdim: int = 1024,
    tokens: int = 2, seed: int = 3,
) -> dict[str, torch.Tensor]:
    """An SSAST pretraining checkpoint as its authors save it (through DataParallel:
    ``module.``): the DeiT trunk under ``v.`` with 1-channel ``patch`` projection (stride =
    patch), the position grid of ``input_fdim`` x ``input_tdim`` plus ``tokens`` class
    tokens (2: cls and dist; 1: base_nokd), the unused DeiT heads, the pretraining heads
    (``cpredlayer``, ``gpredlayer``: Linear-ReLU-Linear to 256), the mask token and the
    pretraining input size as two scalar parameters."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.05

    grid = (input_fdim // patch[0]) * (input_tdim // patch[1])
    sd = {
        "v.cls_token": r(1, 1, dim),
        "v.pos_embed": r(1, grid + tokens, dim),
        "v.patch_embed.proj.weight": r(dim, 1, *patch),
        "v.patch_embed.proj.bias": r(dim),
        "v.norm.weight": 1 + r(dim),
        "v.norm.bias": r(dim),
        "v.head.weight": r(1000, dim),
        "v.head.bias": r(1000),
        "p_input_fdim": torch.tensor(input_fdim),
        "p_input_tdim": torch.tensor(input_tdim),
        "mask_embed": r(1, 1, dim),
    }
    if tokens == 2:
        sd.update({"v.dist_token": r(1, 1, dim), "v.head_dist.weight": r(1000, dim), "v.head_dist.bias": r(1000)})
    for name in ("cpredlayer", "gpredlayer"):
        sd.update({f"{name}.0.weight": r(dim, dim), f"{name}.0.bias": r(dim),
                   f"{name}.2.weight": r(256, dim), f"{name}.2.bias": r(256)})  # fmt: skip
    for i in range(depth):
        p = f"v.blocks.{i}."
        sd.update({
            p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
            p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim),
        })  # fmt: skip
    return {f"module.{k}": v for k, v in sd.items()}


def labelled(model: ASTModel, labels: list[str], multilabel: bool, mean: float = MEAN, std: float = STD) -> ASTModel:
    model.info = ModelInfo(labels=labels, dataset_mean=mean, dataset_std=std, multilabel=multilabel)
    return model


def single_label_model() -> ASTModel:
    """3 labels, softmax, 300 frames (3 s)."""
    return labelled(tiny_ast(label_dim=3, input_tdim=300, seed=1), ["tone", "noise", "chirp"], False)


def multilabel_model() -> ASTModel:
    """3 labels, sigmoid, 128 frames (1.3 s)."""
    return labelled(tiny_ast(label_dim=3, input_tdim=128, seed=2), ["tone", "noise", "chirp"], True)


def write_tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """The tiny checkpoints the inference tests tag with, one per format: ``single``
    (:func:`single_label_model`, safetensors) and ``multi`` (:func:`multilabel_model`, .pt)."""
    return {
        "single": save_checkpoint(single_label_model(), folder / "single.safetensors"),
        "multi": save_checkpoint(multilabel_model(), folder / "multi.pt"),
    }


def loudness_model(input_tdim: int = 300) -> ASTModel:
    """A hand-set AST whose label "loud" fires when most patches are louder than the dataset
    mean, "quiet" when most are quieter, and "never" never.

    Patch embedding = patch mean on one channel; block 0 attends uniformly (q = k = 0) with
    identity value and projection, so the cls/dist tokens get sign(majority) times a fixed
    vector after the LayerNorms; block 1 is the identity; the head reads that sign.
    """
    cfg = ASTConfig(label_dim=3, input_tdim=input_tdim, model_size="tiny224", depth=2)
    info = ModelInfo(labels=["loud", "quiet", "never"], dataset_mean=MEAN, dataset_std=STD, multilabel=True)
    model = ASTModel.from_config(cfg, info)
    d = cfg.embed_dim
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        model.v.patch_embed.proj.weight[0].fill_(1 / 256)  # channel 0 = mean of the 16x16 patch
        attn = model.v.blocks[0].attn
        attn.qkv.weight[2 * d :] = torch.eye(d)  # v = x; q = k = 0: uniform attention
        attn.proj.weight.copy_(torch.eye(d))
        u = torch.full((d,), -1.0 / d)
        u[0] += 1.0
        u /= u.std(unbiased=False)  # LayerNorm(e0): the direction every token points to
        head = model.mlp_head[1]
        head.weight[0] = 10 * u / d
        head.weight[1] = -10 * u / d
        head.bias[2] = -10.0
    return model.eval()


# --------------------------------------------------------------------------- the toy dataset

TOY_CLASSES = [("/m/low", "low tone"), ("/m/high", "high tone"), ("/m/noise", "noise")]


def toy_clip(kind: int, rng, sample_rate: int = 16000, seconds: float = 1.0):
    """A clip of class ``kind``: a 300 Hz tone, a 3 kHz tone, or white noise, at random level."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    level = rng.uniform(0.1, 0.5)
    if kind == 2:
        x = rng.standard_normal(t.size) * level / 2
    else:
        freq = (300 if kind == 0 else 3000) * rng.uniform(0.9, 1.1)
        x = level * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.28))
    return (x + 0.005 * rng.standard_normal(t.size)).astype("float32")


def toy_train_settings(toy: Path, exp: Path, **overrides) -> dict:
    """TrainConfig settings of a tiny run on :func:`write_toy_dataset`'s clips in ``exp``."""
    values = dict(
        data_train=str(toy / "train.json"), data_val=str(toy / "val.json"), label_csv=str(toy / "labels.csv"),
        n_class=3, exp_dir=str(exp), lr=5e-4, batch_size=6, n_epochs=4, fstride=16, tstride=16,
        imagenet_pretrain=False, audio_length=100, metrics="acc", loss="CE", model_size="tiny224", depth=2,
        dataset_mean=-6.0, dataset_std=5.0, lrscheduler_start=10, progress=False,
        amp="off",  # fp32: amp auto is bf16 on CPUs with bf16 units, and the tests must train alike everywhere
    )  # fmt: skip
    values.update(overrides)
    return values


def as_flags(values: dict) -> list[str]:
    """``ast-audio train`` flags of TrainConfig settings (the original's spellings where it had one)."""
    flags = []
    for key, value in values.items():
        flag = {"data_train": "--data-train", "data_val": "--data-val", "data_eval": "--data-eval",
                "label_csv": "--label-csv", "exp_dir": "--exp-dir", "batch_size": "-b", "n_epochs": "--n-epochs",
                "model_size": "--model-size"}.get(key, f"--{key}")  # fmt: skip
        flags += [flag, str(value)]
    return flags


def write_toy_dataset(root, per_class_train: int = 12, per_class_val: int = 4, seed: int = 0):
    """Real wavs + ``train.json`` / ``val.json`` datafiles + ``labels.csv``, the original layout."""
    import json

    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(TOY_CLASSES)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        data = []
        for kind, (mid, _) in enumerate(TOY_CLASSES):
            for i in range(count):
                path = root / "audio" / f"{split}_{kind}_{i}.wav"
                write_audio(path, toy_clip(kind, rng), 16000, subtype="PCM_16")
                data.append({"wav": str(path), "labels": mid})
        (root / f"{split}.json").write_text(json.dumps({"data": data}))
    return root


def train_toy_model(root, epochs: int = 4, seed: int = 0) -> Path:
    """A tiny AST (2 layers, 1 s input, softmax) trained on :func:`write_toy_dataset`'s clips, so
    that its top label of a :func:`toy_clip` is predictable; the best epoch's checkpoint. About
    10 s on one thread."""
    from ast_audio.train import TrainConfig, train

    root = Path(root)
    toy = write_toy_dataset(root / "toy", per_class_train=8, per_class_val=3, seed=seed)
    train(TrainConfig(**toy_train_settings(toy, root / "exp", n_epochs=epochs)))
    return root / "exp" / "models" / "best_audio_model.safetensors"


def toy_sequence(kinds: list[int], seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """:func:`toy_clip` s of the classes ``kinds`` one after another (16 kHz)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([toy_clip(kind, rng, seconds=seconds) for kind in kinds])
