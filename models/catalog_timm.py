"""Catalog entries built through timm (MobileViT, DeiT, Swin, EfficientViT, LeViT, ...)."""

from __future__ import annotations

import functools

from edgevit.errors import ModelError
from edgevit.models._registry import ModelSpec, register_model
from edgevit.models._timm import import_timm


def _build_timm(timm_name: str, hub_id: str, num_classes: int | None = None, pretrained: bool = False):
    timm = import_timm()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    from edgevit.models.hub import require_hub

    require_hub(hub_id, f"pretrained weights for {timm_name}", "Pass --weights FILE (a local checkpoint) instead.")
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"hf_hub_id": hub_id}, **kwargs)
    except Exception as exc:  # hub errors come from requests/huggingface_hub/OSError
        raise ModelError(
            f"could not download pretrained weights for {timm_name} from the Hugging Face hub "
            f"({hub_id}): {str(exc).splitlines()[0][:200]}. Offline? Pass --weights FILE instead."
        ) from None


def _timm(
    name: str,
    family: str,
    attention: str,
    hub_tag: str,
    params_m: float,
    gmacs: float,
    input_size: int = 224,
    crop_pct: float = 0.9,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation: str = "bicubic",
    license: str = "apache-2.0",
    description: str = "",
    known_issues=None,
) -> None:
    hub_id = f"timm/{name}.{hub_tag}"
    register_model(
        ModelSpec(
            name=name,
            family=family,
            attention=attention,
            builder=functools.partial(_build_timm, name, hub_id),
            input_size=(input_size, input_size),
            mean=tuple(mean),
            std=tuple(std),
            crop_pct=crop_pct,
            interpolation=interpolation,
            labels="imagenet",
            source=f"timm:{name}",
            license=license,
            hub_id=hub_id,
            timm_name=name,
            params_m=params_m,
            gmacs=gmacs,
            description=description,
            known_issues=known_issues or {},
        )
    )


_ZERO_MEAN = (0.0, 0.0, 0.0)
_UNIT_STD = (1.0, 1.0, 1.0)
_HALF = (0.5, 0.5, 0.5)

# MobileViT: convolutions with global attention over unfolded patches (v1), separable linear
# attention (v2). Apple's weights: cvnets, Apple sample code license.
_timm("mobilevit_xxs", "mobilevit", "conv-hybrid", "cvnets_in1k", 1.272, 0.4074, 256, 0.9, _ZERO_MEAN, _UNIT_STD, license="other (Apple)", description="MobileViT XXS (Mehta & Rastegari 2022)")
_timm("mobilevit_xs", "mobilevit", "conv-hybrid", "cvnets_in1k", 2.318, 1.026, 256, 0.9, _ZERO_MEAN, _UNIT_STD, license="other (Apple)", description="MobileViT XS")
_timm("mobilevit_s", "mobilevit", "conv-hybrid", "cvnets_in1k", 5.579, 2.001, 256, 0.9, _ZERO_MEAN, _UNIT_STD, license="other (Apple)", description="MobileViT S")
_timm("mobilevitv2_050", "mobilevitv2", "linear", "cvnets_in1k", 1.371, 0.4646, 256, 0.888, _ZERO_MEAN, _UNIT_STD, license="other (Apple)", description="MobileViT v2 0.5 with separable (linear) self-attention",
      # The plain TFLite conversion fails (litert-torch 0.10 lowers the expand_as of the separable
      # attention to a tfl.mul its verifier rejects); edgevit's linear_self_attention rewrite
      # broadcasts instead and converts (2026-12-02).
      )
# DeiT: plain ViTs with global attention (Touvron et al. 2021).
_timm("deit_tiny_patch16_224", "deit", "global", "fb_in1k", 5.717, 1.254, description="DeiT Tiny")
_timm("deit_small_patch16_224", "deit", "global", "fb_in1k", 22.051, 4.599, description="DeiT Small")
_timm("deit_tiny_distilled_patch16_224", "deit", "global", "fb_in1k", 5.911, 1.261, description="DeiT Tiny with distillation token")
# Swin: shifted-window attention (Liu et al. 2021) and the smallest window of timm's SwinV2.
_timm("swin_tiny_patch4_window7_224", "swin", "windowed", "ms_in1k", 28.288, 4.491, license="mit", description="Swin-T, 7x7 windows")
_timm("swinv2_tiny_window8_256", "swinv2", "windowed", "ms_in1k", 28.347, 5.94, 256, license="mit", description="SwinV2-T, 8x8 windows")
# EfficientViT (MIT): multi-scale ReLU linear attention.
_timm("efficientvit_b0", "efficientvit", "linear", "r224_in1k", 3.41, 0.1002, crop_pct=0.95, description="EfficientViT-B0 (Cai et al. 2023), ReLU linear attention")
_timm("efficientvit_b1", "efficientvit", "linear", "r224_in1k", 9.102, 0.5192, crop_pct=0.95, description="EfficientViT-B1")
# LeViT: attention with learned biases, conv-like stages.
_timm("levit_128s", "levit", "global", "fb_in1k", 7.777, 0.3047, description="LeViT-128S (attention biases, BN-based)")
# EfficientFormerV2 and FastViT: convolutional stages with attention late (conv-hybrids).
_timm("efficientformerv2_s0", "efficientformerv2", "conv-hybrid", "snap_dist_in1k", 3.6, 0.3959, crop_pct=0.95, description="EfficientFormerV2-S0")
_timm("fastvit_t8", "fastvit", "cnn", "apple_in1k", 4.026, 0.6901, 256, license="other (Apple)", description="FastViT-T8 (RepMixer token mixing, no attention)")
_timm("fastvit_sa12", "fastvit", "conv-hybrid", "apple_in1k", 11.581, 1.944, 256, license="other (Apple)", description="FastViT-SA12 (attention in the last stage)")
# CNN baseline.
_timm("mobilenetv3_small_100", "mobilenetv3", "cnn", "lamb_in1k", 2.543, 0.05651, crop_pct=0.875, description="MobileNetV3-Small 1.0 (CNN baseline)")
_timm("mobilenetv3_large_100", "mobilenetv3", "cnn", "ra_in1k", 5.483, 0.2166, crop_pct=0.875, description="MobileNetV3-Large 1.0 (CNN baseline)")
