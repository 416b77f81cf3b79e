"""Catalog entries implemented in edgevit (attention variants timm lacks, and the shipped
Fashion-MNIST ViT that gives meaningful labels offline)."""

from __future__ import annotations

from edgevit.models._registry import ModelSpec, register_model
from edgevit.models.labels import FASHION_DATA, FASHION_MNIST_LABELS
from edgevit.models.vit import EdgeViT


DEFAULT_MODEL = "vit_fmnist_tiny"


def _vit_tiny(attention: str, global_pool: str = "token", **kw):
    def build(num_classes: int | None = None, pretrained: bool = False) -> EdgeViT:
        return EdgeViT(
            img_size=224,
            patch_size=16,
            num_classes=1000 if num_classes is None else num_classes,
            embed_dim=192,
            depth=12,
            num_heads=3,
            attention=attention,
            global_pool=global_pool,
            **kw,
        )

    return build


def _fmnist(num_classes: int | None = None, pretrained: bool = False) -> EdgeViT:
    return EdgeViT(
        img_size=28,
        patch_size=4,
        in_chans=1,
        num_classes=len(FASHION_MNIST_LABELS) if num_classes is None else num_classes,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        attention="full",
        global_pool="avg",
        stem="conv",
    )


register_model(
    ModelSpec(
        name=DEFAULT_MODEL,
        family="edgevit-vit",
        attention="global",
        builder=_fmnist,
        input_size=(28, 28),
        **FASHION_DATA,
        source="edgevit",
        license="apache-2.0 (weights trained here on Fashion-MNIST, MIT)",
        embedded_weights="vit_fmnist_tiny.safetensors",
        params_m=0.152,
        gmacs=0.00837,
        description="Conv-stem ViT (4 blocks, width 64, 4 heads) trained here on Fashion-MNIST (90.1% test top-1); ships with weights",
    )
)

register_model(
    ModelSpec(
        name="vit_tiny_window",
        family="edgevit-vit",
        attention="windowed",
        builder=_vit_tiny("window", global_pool="avg", attn_kwargs={"window": 7}, alternate_shift=True),
        source="edgevit",
        license="apache-2.0",
        params_m=5.717,
        gmacs=1.114,
        description="DeiT-Tiny geometry with shifted 7x7 window attention (rank <= 5 partition)",
    )
)

register_model(
    ModelSpec(
        name="vit_tiny_linformer",
        family="edgevit-vit",
        attention="linear",
        builder=_vit_tiny("linformer", attn_kwargs={"k": 64}),
        source="edgevit",
        license="apache-2.0",
        params_m=6.02,
        gmacs=1.191,
        description="DeiT-Tiny geometry with Linformer attention (k=64)",
    )
)

register_model(
    ModelSpec(
        name="vit_tiny_performer",
        family="edgevit-vit",
        attention="linear",
        builder=_vit_tiny("performer", attn_kwargs={"features": 64}),
        source="edgevit",
        license="apache-2.0",
        params_m=5.717,
        gmacs=1.192,
        description="DeiT-Tiny geometry with Performer FAVOR+ attention (64 random features)",
    )
)
