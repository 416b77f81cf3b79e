"""The efficient-attention zoo in the catalog: one plain ViT per attention mechanism.

* ``vit_tiny_<mechanism>``: DeiT-Tiny geometry (224 px, patch 16, width 192, 12 blocks, 3 heads,
  class token) with the mechanism of :mod:`edgevit.models.attention`; ``vit_tiny_window``,
  ``vit_tiny_linformer`` and ``vit_tiny_performer`` live in ``catalog_edgevit.py``.
* ``vit_fmnist_<mechanism>``: the same mechanisms at Fashion-MNIST scale (32 x 32 grayscale,
  patch 4 -> 8 x 8 = 64 tokens, width 96, 4 blocks, 3 heads, average pooling): small enough to
  train on two cores and to export in tests; the accuracy column of the zoo's table.

Each entry's ``known_issues`` comes from the mechanism's measured ``export_issues``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgevit.models._registry import ModelSpec, register_model
from edgevit.models.attention import get_attention, share_projections_across_layers
from edgevit.models.labels import FASHION_DATA, FASHION_MNIST_LABELS
from edgevit.models.vit import EdgeViT

__all__ = ["FIGURES", "FMNIST_ZOO_KWARGS", "SIZE_OPTIONS", "TINY_SIZE_OPTIONS", "TINY_ZOO_KWARGS", "ZOO_KIND", "zoo_vit"]


# The catalog's attention kind of each mechanism (ModelSpec.attention).
ZOO_KIND = {
    "full": "global",
    "window": "windowed",
    "longformer": "windowed",
    "global_tokens": "windowed",
    "bigbird": "windowed",
    "sparse_strided": "windowed",
    "sparse_fixed": "windowed",
    "axial": "windowed",
    "memory_compressed": "global",
    "linformer": "linear",
    "nystromformer": "linear",
    "linear": "linear",
    "performer": "linear",
    "cosformer": "linear",
    "relu_linear": "linear",
    "reformer": "windowed",
    "sinkhorn": "windowed",
    "routing": "windowed",
    "synthesizer_dense": "global",
    "synthesizer_random": "global",
}

# Mechanism options at 224 px (14 x 14 patches + class token).
TINY_ZOO_KWARGS: dict[str, dict[str, Any]] = {
    "full": {},
    "longformer": {"radius": 7, "dilation": (1, 2, 4)},
    "global_tokens": {"radius": 7, "global_grid": 2},
    "bigbird": {"block": 16, "random_blocks": 2, "global_blocks": 1},
    "sparse_strided": {},
    "sparse_fixed": {"summary": 1},
    "axial": {},
    "memory_compressed": {"stride": 4},
    "linformer_layerwise": {"k": 64, "sharing": "layerwise"},
    "nystromformer": {"landmarks": 32},
    "linear": {},
    "cosformer": {},
    "relu_linear": {},
    "reformer": {"chunk": 32},
    "sinkhorn": {"block": 16},
    "routing": {},
    "synthesizer_dense": {},
    "synthesizer_random": {},
}

# Mechanism options at Fashion-MNIST scale (8 x 8 patches, no class token).
FMNIST_ZOO_KWARGS: dict[str, dict[str, Any]] = {
    "full": {},
    "window": {"window": 4},
    "longformer": {"radius": 4, "dilation": (1, 2, 4)},
    "global_tokens": {"radius": 4, "global_grid": 2},
    "bigbird": {"block": 8, "random_blocks": 1, "global_blocks": 1},
    "sparse_strided": {},
    "sparse_fixed": {"summary": 1},
    "axial": {},
    "memory_compressed": {"stride": 4},
    "linformer": {"k": 16},
    "nystromformer": {"landmarks": 8},
    "linear": {},
    "performer": {"features": 32},
    "cosformer": {},
    "relu_linear": {},
    "reformer": {"chunk": 16},
    "sinkhorn": {"block": 8},
    "routing": {},
    "synthesizer_dense": {},
    "synthesizer_random": {},
}

# (params M, GMACs) at each entry's input size, measured with edgevit.measure.profile (`edgevit profile`).
FIGURES: dict[str, tuple[float, float]] = {
    "vit_tiny_axial": (7.051, 1.365), "vit_tiny_bigbird": (5.717, 1.174), "vit_tiny_cosformer": (5.717, 1.192),
    "vit_tiny_full": (5.717, 1.254), "vit_tiny_global_tokens": (5.717, 1.103), "vit_tiny_linear": (5.717, 1.133),
    "vit_tiny_linformer_layerwise": (5.73, 1.191), "vit_tiny_longformer": (5.717, 1.096),
    "vit_tiny_memory_compressed": (9.261, 1.294), "vit_tiny_nystromformer": (5.717, 1.195),
    "vit_tiny_reformer": (5.273, 1.058), "vit_tiny_relu_linear": (5.717, 1.133), "vit_tiny_routing": (5.717, 1.102),
    "vit_tiny_sinkhorn": (5.778, 1.117), "vit_tiny_sparse_fixed": (5.717, 1.102),
    "vit_tiny_sparse_strided": (5.717, 1.102), "vit_tiny_synthesizer_dense": (5.734, 1.167),
    "vit_tiny_synthesizer_random": (6.225, 0.99),
    "vit_fmnist_axial": (0.42, 0.02684), "vit_fmnist_bigbird": (0.308, 0.02109),
    "vit_fmnist_cosformer": (0.308, 0.02217), "vit_fmnist_full": (0.308, 0.02212),
    "vit_fmnist_global_tokens": (0.308, 0.01996), "vit_fmnist_linear": (0.308, 0.02057),
    "vit_fmnist_linformer": (0.316, 0.02055), "vit_fmnist_longformer": (0.308, 0.01956),
    "vit_fmnist_memory_compressed": (0.604, 0.02448), "vit_fmnist_nystromformer": (0.308, 0.02035),
    "vit_fmnist_performer": (0.308, 0.02214), "vit_fmnist_reformer": (0.271, 0.01824),
    "vit_fmnist_relu_linear": (0.308, 0.02057), "vit_fmnist_routing": (0.308, 0.01976),
    "vit_fmnist_sinkhorn": (0.313, 0.02028), "vit_fmnist_sparse_fixed": (0.308, 0.01976),
    "vit_fmnist_sparse_strided": (0.308, 0.01976), "vit_fmnist_synthesizer_dense": (0.296, 0.01976),
    "vit_fmnist_synthesizer_random": (0.283, 0.01583), "vit_fmnist_window": (0.308, 0.01976),
}


def _mechanism(entry: str) -> str:
    return "linformer" if entry.startswith("linformer") else entry


def zoo_vit(mechanism: str, attn_kwargs: Mapping[str, Any] | None = None, *, img_size: int = 224,
            patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192,
            depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0, global_pool: str = "token") -> EdgeViT:
    """A plain ViT with attention ``mechanism`` (Linformer ``sharing="layerwise"`` is tied across
    layers). The window mechanism needs ``global_pool="avg"`` and alternates shifted windows."""
    model = EdgeViT(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, attention=mechanism,
        attn_kwargs=dict(attn_kwargs or {}), global_pool=global_pool, alternate_shift=mechanism == "window",
    )
    share_projections_across_layers(model)
    return model


def _tiny_builder(entry: str):
    def build(num_classes: int | None = None, pretrained: bool = False) -> EdgeViT:
        classes = 1000 if num_classes is None else num_classes
        return zoo_vit(_mechanism(entry), TINY_ZOO_KWARGS[entry], num_classes=classes)

    return build


def _fmnist_builder(entry: str):
    def build(num_classes: int | None = None, pretrained: bool = False) -> EdgeViT:
        return zoo_vit(
            entry, FMNIST_ZOO_KWARGS[entry], img_size=32, patch_size=4, in_chans=1,
            num_classes=len(FASHION_MNIST_LABELS) if num_classes is None else num_classes,
            embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0, global_pool="avg",
        )

    return build


def _describe(mechanism: str, kwargs: Mapping[str, Any]) -> str:
    cls = get_attention(mechanism)
    opts = "".join(f", {k}={v}" for k, v in kwargs.items())
    return f"{mechanism} attention ({cls.paper.split(',')[0]}; claimed {cls.complexity}{opts})"


def _known_issues(mechanism: str) -> dict[str, str]:
    return dict(get_attention(mechanism).export_issues)


for _entry, _kwargs in TINY_ZOO_KWARGS.items():
    _mech = _mechanism(_entry)
    register_model(
        ModelSpec(
            name=f"vit_tiny_{_entry}",
            family="edgevit-vit",
            attention=ZOO_KIND[_mech],
            builder=_tiny_builder(_entry),
            source="edgevit",
            license="apache-2.0",
            params_m=FIGURES.get(f"vit_tiny_{_entry}", (0.0, 0.0))[0],
            gmacs=FIGURES.get(f"vit_tiny_{_entry}", (0.0, 0.0))[1],
            description=f"DeiT-Tiny geometry, {_describe(_mech, _kwargs)}",
            known_issues=_known_issues(_mech),
        )
    )

# Entries with weights trained on Fashion-MNIST shipped in models/weights/ (one per attention kind
# besides the default vit_fmnist_tiny; see benchmarks/results/quantize.md).
_TRAINED = ("linformer", "window")

for _entry, _kwargs in FMNIST_ZOO_KWARGS.items():
    register_model(
        ModelSpec(
            name=f"vit_fmnist_{_entry}",
            family="edgevit-vit",
            attention=ZOO_KIND[_entry],
            builder=_fmnist_builder(_entry),
            input_size=(32, 32),
            **FASHION_DATA,
            source="edgevit",
            license="apache-2.0",
            params_m=FIGURES.get(f"vit_fmnist_{_entry}", (0.0, 0.0))[0],
            gmacs=FIGURES.get(f"vit_fmnist_{_entry}", (0.0, 0.0))[1],
            description=f"Fashion-MNIST-scale zoo ViT (32 px, patch 4, 4 blocks), {_describe(_entry, _kwargs)}"
            + ("; ships with weights trained here (benchmarks/quantize.py train)" if _entry in _TRAINED else ""),
            embedded_weights=f"vit_fmnist_{_entry}.safetensors" if _entry in _TRAINED else None,
            known_issues=_known_issues(_entry),
        )
    )

# ------------------------------------------------------------------------------------------------
# Size options (ALBERT, Lan et al. 2020): cross-layer parameter sharing and a factorized patch
# embedding, on the full-attention zoo ViT at both scales (see models/vit.py).

SIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "shared": {"share_layers": 1},
    "factorized": {"embed_rank": 8},  # Fashion-MNIST scale: 4 x 4 x 1 = 16 patch pixels -> 8 -> 96
}
TINY_SIZE_OPTIONS: dict[str, dict[str, Any]] = {
    "shared": {"share_layers": 1},
    "factorized": {"embed_rank": 64},  # 16 x 16 x 3 = 768 patch pixels -> 64 -> 192
}

FIGURES.update({
    "vit_fmnist_full_shared": (0.08372, 0.02212), "vit_fmnist_full_factorized": (0.3074, 0.02208),
    "vit_tiny_full_shared": (0.8239, 1.254), "vit_tiny_full_factorized": (5.631, 1.237),
})


def _size_option_builder(scale: str, option: str):
    def build(num_classes: int | None = None, pretrained: bool = False) -> EdgeViT:
        if scale == "tiny":
            return EdgeViT(attention="full", num_classes=1000 if num_classes is None else num_classes,
                           **TINY_SIZE_OPTIONS[option])
        return EdgeViT(
            img_size=32, patch_size=4, in_chans=1,
            num_classes=len(FASHION_MNIST_LABELS) if num_classes is None else num_classes,
            embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0, attention="full", global_pool="avg",
            **SIZE_OPTIONS[option],
        )

    return build


def _describe_size(option: str, kwargs: Mapping[str, Any], depth: int) -> str:
    if option == "shared":
        return (f"full attention, ALBERT all-shared layers (share_layers={kwargs['share_layers']}: one block's "
                f"parameters applied {depth} times)")
    return (f"full attention, ALBERT-style factorized patch embedding (embed_rank={kwargs['embed_rank']}: "
            "patch pixels -> rank -> width)")


for _option, _kwargs in TINY_SIZE_OPTIONS.items():
    register_model(
        ModelSpec(
            name=f"vit_tiny_full_{_option}",
            family="edgevit-vit",
            attention=ZOO_KIND["full"],
            builder=_size_option_builder("tiny", _option),
            source="edgevit",
            license="apache-2.0",
            params_m=FIGURES[f"vit_tiny_full_{_option}"][0],
            gmacs=FIGURES[f"vit_tiny_full_{_option}"][1],
            description=f"DeiT-Tiny geometry, {_describe_size(_option, _kwargs, 12)}",
            known_issues=_known_issues("full"),
        )
    )

for _option, _kwargs in SIZE_OPTIONS.items():
    register_model(
        ModelSpec(
            name=f"vit_fmnist_full_{_option}",
            family="edgevit-vit",
            attention=ZOO_KIND["full"],
            builder=_size_option_builder("fmnist", _option),
            input_size=(32, 32),
            **FASHION_DATA,
            source="edgevit",
            license="apache-2.0",
            params_m=FIGURES[f"vit_fmnist_full_{_option}"][0],
            gmacs=FIGURES[f"vit_fmnist_full_{_option}"][1],
            description=f"Fashion-MNIST-scale zoo ViT (32 px, patch 4, 4 blocks), {_describe_size(_option, _kwargs, 4)}",
            known_issues=_known_issues("full"),
        )
    )
