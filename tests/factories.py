"""Factories: tiny models and state dicts in the exact published layouts."""

from __future__ import annotations

import torch

from ast_audio import ASTModel


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


TOY_CLASSES = [("/m/low", "low tone"), ("/m/high", "high tone"), ("/m/noise", "noise")]


def toy_clip(kind: int, rng, sample_rate: int = 16000, seconds: float = 1.0):
    """A clip of class ``kind``: a 300 Hz tone, a 3 kHz tone, or white noise, at random level."""
    import numpy as np

    t = np.arange(int(sample_rate * seconds)) / sample_rate
    level = rng.uniform(0.1, 0.5)
    if kind == 2:
        x = rng.standard_normal(t.size) * level / 2
    else:
        freq = (300 if kind == 0 else 3000) * rng.uniform(0.9, 1.1)
        x = level * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.28))
    return (x + 0.005 * rng.standard_normal(t.size)).astype("float32")


def write_toy_dataset(root, per_class_train: int = 12, per_class_val: int = 4, seed: int = 0):
    """Real wavs + ``train.json`` / ``val.json`` datafiles + ``labels.csv``, the original layout."""
    import json
    from pathlib import Path

    import numpy as np
    import soundfile as sf

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
                sf.write(path, toy_clip(kind, rng), 16000, subtype="PCM_16")
                data.append({"wav": str(path), "labels": mid})
        (root / f"{split}.json").write_text(json.dumps({"data": data}))
    return root
