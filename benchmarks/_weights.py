"""Seeded, non-degenerate weights for benchmark and support-matrix exports of random-init models.

timm zero-initialises some scales so that a fresh residual branch starts as the identity: LeViT's
last BatchNorm of every residual branch, SwinV2's res-post-norm LayerNorms, MobileViT's last
BatchNorm of some inverted-residual blocks. A converter folds such a branch away (litert-torch
writes a 9.3 MB SwinV2-T with 79 operators), and verification then passes on a graph without
those blocks. Trained weights never allow that, so the benchmarks export from these instead.
"""

from __future__ import annotations

from pathlib import Path


def zero_scales(model_name: str) -> list[str]:
    """The 1-D, non-bias parameters that are all zero at random initialisation (seed 0)."""
    import torch

    from edgevit.models import create_model

    torch.manual_seed(0)
    net = create_model(model_name)
    return [n for n, p in net.named_parameters() if p.dim() == 1 and not n.endswith("bias") and not p.any()]


def bench_weights(model: str, out: Path) -> Path:
    """A seeded weights file for ``model`` with non-zero biases, LayerNorm affine and a head scaled
    to logits of ImageNet-trained magnitude (about 10): closer to trained weights than random init."""
    import torch

    from edgevit.models import create_model
    from edgevit.models.weights import save_weights

    path = Path(out) / f"{model}_bench.safetensors"
    if path.exists():
        return path
    torch.manual_seed(0)
    net = create_model(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and not p.any():
                # a zero-initialised scale: a converter may fold its branch away entirely
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and "norm" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
        head = net.get_classifier() if hasattr(net, "get_classifier") else getattr(net, "head", None)
        if isinstance(head, torch.nn.Linear):
            head.weight.mul_(20.0)
    save_weights(net, path)
    return path


def photo_crops(folder: Path, count: int = 48) -> Path:
    """``count`` random square crops of the installed real photos saved into ``folder``: the
    calibration set of the ImageNet-shaped benchmark models (seeded, so runs agree)."""
    import numpy as np

    from edgevit.data.samples import natural_photos

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = natural_photos()
    for i in range(count):
        name, img = photos[i % len(photos)]
        w, h = img.size
        s = int(min(w, h) * rng.uniform(0.45, 0.95))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        img.crop((x, y, x + s, y + s)).save(folder / f"{i:03d}_{name}.png")
    return folder
