"""Model sources: every way to name a model, resolved to what the catalog gives (a spec + a module).

================================  ==============================================================
``mobilevit_xxs``                 a catalog name (``edgevit list``)
``timm:vit_small_patch16_224``    any architecture ``timm.list_models()`` knows (``NAME.TAG`` too);
                                  input size, mean/std, crop and interpolation from its pretrained
                                  config; ``pretrained=True`` downloads the hub weights
``hf:facebook/deit-tiny-patch16-224``  a Hugging Face ``transformers`` image classifier (online)
``./my-vit`` (a folder)           written by ``save_pretrained``: ``config.json`` + weights, and the
                                  image processor's ``preprocessor_config.json``
an ``nn.Module`` (Python)         with the facts a module cannot tell: :func:`module_spec`
================================  ==============================================================

:func:`load_model` builds any of them with the user's classes (``labels``, ``num_classes``, or
both read from a checkpoint) and checks that the labels match the model's outputs.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevit.errors import ConfigError, ModelError, UnknownModelError
from edgevit.models._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    SourceResolver,
    create_model,
    get_spec,
    register_source_resolver,
    source_slug,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "HF_PREFIX",
    "TIMM_PREFIX",
    "ResolvedModel",
    "is_source",
    "load_model",
    "module_spec",
    "read_labels",
    "source_slug",
    "source_spec",
]

TIMM_PREFIX = "timm:"
HF_PREFIX = "hf:"
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _is_hf_folder(name: str) -> bool:
    p = Path(name).expanduser()
    return p.is_dir() and (p / "config.json").is_file()


def is_source(name: str) -> bool:
    """Whether ``name`` is a source other than a catalog name (``timm:``, ``hf:``, a folder)."""
    return name.startswith((TIMM_PREFIX, HF_PREFIX)) or _is_hf_folder(name)


def timm_hint(name: str) -> str:
    """A hint for an unknown model name: a timm architecture (``timm:NAME``), a folder that is not
    a ``save_pretrained`` one, a checkpoint passed as the model; else ''."""
    p = Path(name).expanduser()
    if p.is_dir():
        return (f"({p} is a folder without config.json: a Hugging Face model folder is written by "
                "model.save_pretrained(FOLDER))")
    if p.is_file():
        return (f"({p} is a file: name the architecture and pass the checkpoint with --weights, e.g. "
                f"`edgevit export timm:NAME --weights {name}`)")
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
        return ""
    try:
        from edgevit.models._timm import import_timm

        timm = import_timm()
    except ImportError:
        return ""
    if timm.is_model(name):
        return f"(it is a timm architecture: use timm:{name})"
    return ""


# ------------------------------------------------------------------------------------------------
# Attention kind, told from a family name (informational: rewrites find modules by structure)

_WINDOWED = ("swin", "maxvit", "maxxvit", "gcvit", "davit", "twins", "cswin", "nest", "hiera", "focalnet",
             "coatnet", "sam")
_LINEAR = ("efficientvit", "linformer", "performer", "mobilevitv2", "mobilevit_v2", "xcit")
_HYBRID = ("mobilevit", "levit", "efficientformer", "fastvit", "edgenext", "coat", "nextvit", "repvit", "mobileone",
           "crossvit", "conformer", "cvt", "tiny_vit", "tinyvit", "convit", "mobilenetv4_hybrid", "vitamin")
_CNN = ("convnext", "resnet", "resnext", "mobilenet", "efficientnet", "regnet", "poolformer", "convmixer", "dense",
        "vgg", "inception", "ghostnet", "rexnet", "mixnet", "fbnet", "hgnet", "repvgg", "dla", "dpn", "cspnet",
        "darknet", "res2net", "resnest", "senet", "sknet", "bit", "nfnet", "mnasnet", "lcnet", "tinynet", "squeezenet")


def attention_kind(family: str) -> str:
    f = family.lower()
    for kind, prefixes in (("windowed", _WINDOWED), ("linear", _LINEAR), ("conv-hybrid", _HYBRID), ("cnn", _CNN)):
        if f.startswith(prefixes):
            if kind == "cnn" and "hybrid" in f:
                return "conv-hybrid"
            return kind
    return "global"


# ------------------------------------------------------------------------------------------------
# timm:NAME


def _import_timm():
    from edgevit.models._timm import import_timm

    return import_timm()


def _build_timm_source(timm_name: str, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    timm = _import_timm()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained:
        from edgevit.models.hub import require_hub

        cfg = timm.models.get_pretrained_cfg(timm_name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            raise ModelError(f"timm:{timm_name} has no pretrained weights on the Hugging Face hub; "
                             "pass --weights FILE (your checkpoint)")
        require_hub(repo, f"pretrained weights for timm:{timm_name}",
                    "Pass --weights FILE (a local checkpoint) instead of --pretrained.",
                    cached_files=("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # hub errors come from requests / huggingface_hub / OSError
            raise ModelError(f"could not load pretrained weights for timm:{timm_name} ({repo}): "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}. "
                             "Pass --weights FILE instead.") from None
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def _timm_labels(timm, cfg) -> tuple[str | tuple[str, ...], tuple[str, ...]]:
    """The label set of a timm pretrained config (``imagenet`` for 1000 classes) and notes."""
    n = int(getattr(cfg, "num_classes", 0) or 0)
    if n == 1000:
        return "imagenet", ()
    try:
        subset = timm.data.infer_imagenet_subset(cfg)
        if subset:
            info = timm.data.ImageNetInfo(subset)
            if info.num_classes() == n:
                return tuple(info.index_to_description(i) for i in range(n)), ()
    except Exception:  # noqa: BLE001 - timm cannot tell the subset: generic names below
        pass
    if n <= 0:
        return (), ()  # a feature model: load_model asks for --num-classes
    return tuple(f"class_{i}" for i in range(n)), (
        f"timm's pretrained config names no label set for its {n} classes: generic names class_0.. are used; "
        "pass --labels FILE for real names",)


def _timm_spec(source: str) -> ModelSpec:
    timm = _import_timm()
    timm_name = source[len(TIMM_PREFIX):]
    if not timm_name or not timm.is_model(timm_name):
        import difflib

        arch = timm_name.split(".")[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UnknownModelError(source, [], hint=f"(timm has no architecture {arch!r}{hint}; `timm.list_models()` "
                                                 "lists them)")
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:  # an architecture without any pretrained config
        cfg_dict: dict[str, Any] = {}
    else:
        cfg_dict = cfg.to_dict()
    in_size = tuple(cfg_dict.get("input_size") or (3, 224, 224))
    chans = int(in_size[0])
    labels, notes = _timm_labels(timm, cfg) if cfg is not None else (
        "imagenet", ("no pretrained config: ImageNet preprocessing assumed",))
    mean = tuple(cfg_dict.get("mean") or IMAGENET_MEAN)
    std = tuple(cfg_dict.get("std") or IMAGENET_STD)
    if chans == 1:
        mean, std = mean[:1], std[:1]
    arch = timm_name.split(".")[0]
    family = arch.split("_")[0]
    return ModelSpec(
        name=source,
        family=family,
        attention=attention_kind(arch),
        builder=functools.partial(_build_timm_source, timm_name),
        input_size=(int(in_size[1]), int(in_size[2])),
        color_mode="L" if chans == 1 else "RGB",
        mean=mean,
        std=std,
        crop_pct=float(cfg_dict.get("crop_pct") or 0.875),
        interpolation=str(cfg_dict.get("interpolation") or "bicubic"),
        labels=labels,
        source=source,
        license=str(cfg_dict.get("license") or ""),
        hub_id=cfg_dict.get("hf_hub_id") or None,
        timm_name=timm_name,
        description=f"timm architecture {timm_name}",
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------------
# hf:ORG/NAME and save_pretrained folders


def _import_transformers():
    from edgevit.errors import MissingDependencyError

    _import_timm()  # the torchvision compatibility step: transformers' image classes import torchvision
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "export", "load Hugging Face models") from None
    return transformers


@functools.lru_cache(maxsize=1)
def _hf_wrapper_class():
    from torch import nn

    class HFImageClassifier(nn.Module):
        """A transformers image classifier as a plain ``images -> logits`` module."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.hf = model

        def forward(self, pixel_values):
            return self.hf(pixel_values=pixel_values).logits

    HFImageClassifier.edgevit_key_prefix = "hf."  # load_weights takes save_pretrained keys as they are
    return HFImageClassifier


def _hf_ref(source: str) -> tuple[str, bool]:
    """(repo id or folder path, is_local)."""
    if source.startswith(HF_PREFIX):
        ref = source[len(HF_PREFIX):].strip()
        if _is_hf_folder(ref):
            return str(Path(ref).expanduser().resolve()), True
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref):
            raise ConfigError(f"{source!r} is not a Hugging Face model id: use hf:ORG/NAME (e.g. "
                              "hf:facebook/deit-tiny-patch16-224) or the path of a save_pretrained folder")
        return ref, False
    return str(Path(source).expanduser().resolve()), True


def _hf_file(ref: str, local: bool, filename: str) -> Path | None:
    if local:
        p = Path(ref) / filename
        return p if p.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref, filename))
    except Exception:  # noqa: BLE001 - a repo without this file
        return None


def _hf_preprocessing(doc: dict[str, Any], config) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    out: dict[str, Any] = {}
    mean, std = doc.get("image_mean"), doc.get("image_std")
    if mean is None or std is None:
        notes.append("no image processor config (preprocessor_config.json) was found: ImageNet mean/std assumed; "
                     "save the image processor beside the model to use its own")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if not doc.get("do_normalize", True):
        mean, std = (0.0,) * len(mean), (1.0,) * len(std)
    rescale = doc.get("rescale_factor", 1 / 255)
    if doc.get("do_rescale", True) and abs(float(rescale) - 1 / 255) > 1e-9:
        notes.append(f"the image processor rescales by {rescale}, not 1/255: edgevit feeds pixels scaled to [0, 1]")
    out["mean"], out["std"] = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    size = doc.get("size")
    crop = doc.get("crop_size") if doc.get("do_center_crop") else None

    def hw(d) -> tuple[int, int] | None:
        if isinstance(d, int):
            return d, d
        if isinstance(d, dict) and "height" in d and "width" in d:
            return int(d["height"]), int(d["width"])
        return None

    image_size = getattr(config, "image_size", 224)
    image_size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (int(image_size), int(image_size))
    input_size = hw(crop) or hw(size)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    if input_size is None:
        input_size = image_size if not shortest or not crop else (int(shortest), int(shortest))
    crop_pct = 1.0
    if "crop_pct" in doc and doc.get("crop_pct"):
        crop_pct = float(doc["crop_pct"])
    elif crop is not None and shortest:
        crop_pct = min(1.0, input_size[0] / float(shortest))
    out["input_size"] = (int(input_size[0]), int(input_size[1]))
    out["crop_pct"] = crop_pct
    out["interpolation"] = _RESAMPLE.get(doc.get("resample", 2), "bilinear")
    return out, notes


def _build_hf(ref: str, local: bool, has_weights: bool, num_classes: int | None = None,
              pretrained: bool = False) -> nn.Module:
    transformers = _import_transformers()
    auto = transformers.AutoModelForImageClassification
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs.update(num_labels=num_classes, ignore_mismatched_sizes=True)
    import torch

    # Profiling builds models on the meta device, where from_pretrained refuses to load weights:
    # the architecture alone is what is counted there.
    on_meta = torch.empty(0).device.type == "meta"
    try:
        if has_weights and not on_meta:
            model = auto.from_pretrained(ref, **kwargs)
        else:
            config = transformers.AutoConfig.from_pretrained(ref, **({"num_labels": num_classes} if num_classes else {}))
            model = auto.from_config(config)
    except EnvironmentError as exc:
        raise ModelError(f"could not load the Hugging Face model {ref}: {str(exc).splitlines()[0][:300]}") from None
    except ValueError as exc:  # an architecture that is not an image classifier
        raise ModelError(f"{ref} is not a transformers image classifier: {str(exc).splitlines()[0][:300]}") from None
    model.eval()
    return _hf_wrapper_class()(model)


def _hf_spec(source: str) -> ModelSpec:
    ref, local = _hf_ref(source)
    transformers = _import_transformers()
    if not local:
        from edgevit.models.hub import require_hub

        require_hub(ref, f"the model {ref}",
                    "Save it once with save_pretrained() where you are online and pass that folder instead.",
                    cached_files=("config.json",))
    try:
        config = transformers.AutoConfig.from_pretrained(ref)
    except Exception as exc:  # noqa: BLE001 - missing/invalid config.json, unknown model_type, hub errors
        raise ModelError(f"could not read the model config of {ref}: {str(exc).splitlines()[0][:300]}") from None
    arch = (getattr(config, "architectures", None) or [""])[0]
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if config.model_type not in mapping:
        raise ModelError(f"{ref} is a {config.model_type!r} model ({arch or 'no architecture named'}), not an image "
                         f"classifier transformers knows; supported model types include "
                         f"{', '.join(sorted(mapping)[:12])}, ...")
    doc: dict[str, Any] = {}
    pre = _hf_file(ref, local, "preprocessor_config.json")
    if pre is not None:
        try:
            doc = json.loads(pre.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{pre} is not a valid image processor config: {exc}") from None
    prep, notes = _hf_preprocessing(doc, config)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    if sorted(id2label) != list(range(n)):
        raise ModelError(f"{ref}: config.id2label does not name classes 0..{n - 1}; fix it or pass --labels FILE")
    labels = tuple(id2label[i] for i in range(n))
    if all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        notes.append("config.id2label holds transformers' placeholder names (LABEL_0, ...); pass --labels FILE "
                     "for real class names")
    if local:
        has_weights = any((Path(ref) / w).is_file() for w in _HF_WEIGHTS)
        if not has_weights:
            notes.append(f"{ref} holds no weights (model.safetensors): the model is randomly initialised")
    else:
        has_weights = True
    chans = int(getattr(config, "num_channels", 3) or 3)
    mean, std = prep.pop("mean"), prep.pop("std")
    if chans == 1:
        mean, std = mean[:1], std[:1]
    name = f"{HF_PREFIX}{ref}" if not local else ref
    return ModelSpec(
        name=name,
        family=config.model_type,
        attention=attention_kind(config.model_type),
        builder=functools.partial(_build_hf, ref, local, has_weights),
        color_mode="L" if chans == 1 else "RGB",
        mean=mean,
        std=std,
        labels=labels,
        source=name,
        hub_id=None if local else ref,
        default_weights=(ref if has_weights else None) if local else None,
        description=f"transformers {arch or config.model_type}",
        notes=tuple(notes),
        **prep,
    )


@functools.lru_cache(maxsize=64)
def _cached_spec(source: str) -> ModelSpec:
    if source.startswith(TIMM_PREFIX):
        return _timm_spec(source)
    return _hf_spec(source)


def source_spec(source: str) -> ModelSpec:
    """The :class:`ModelSpec` of a ``timm:``, ``hf:`` or folder source (cached per process)."""
    if not source.startswith((TIMM_PREFIX, HF_PREFIX)):
        source = str(Path(source).expanduser().resolve())
    return _cached_spec(source)


# ------------------------------------------------------------------------------------------------
# nn.Module (Python)


def module_spec(
    module: nn.Module,
    *,
    name: str | None = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: Sequence[str] | str | os.PathLike | None = None,
    color_mode: str | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    attention: str | None = None,
) -> ModelSpec:
    """A spec for a user's ``nn.Module``. A timm model tells its own preprocessing
    (``pretrained_cfg``); any other module needs ``input_size``, ``mean``, ``std`` and ``labels``."""
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    missing = []
    if input_size is None:
        if cfg.get("input_size"):
            input_size = tuple(cfg["input_size"][1:])
        else:
            missing.append("input_size=(H, W)")
    if mean is None or std is None:
        if cfg.get("mean") and cfg.get("std"):
            mean = cfg["mean"] if mean is None else mean
            std = cfg["std"] if std is None else std
        else:
            missing.append("mean=(...), std=(...) (the normalisation it was trained with)")
    if labels is None and not cfg:
        missing.append("labels=[...] (one class name per output, or a labels file)")
    if missing:
        raise ConfigError(f"a {type(module).__name__} module cannot tell its own " + ", ".join(missing)
                          + "; pass them to export(module, ...)")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(v) for v in input_size)  # type: ignore[union-attr]
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"input_size must be (H, W) in pixels, got {input_size!r}")
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)  # type: ignore[union-attr]
    mode = color_mode or ("L" if len(mean_t) == 1 else "RGB")
    if labels is None:
        label_set: str | tuple[str, ...] = "imagenet"
        n = int(cfg.get("num_classes") or getattr(module, "num_classes", 1000) or 0)
        if n != 1000:
            raise ConfigError(f"{type(module).__name__} has {n} classes: pass labels=[...] with their names")
    else:
        label_set = read_labels(labels)
    family = str(cfg.get("architecture") or type(module).__name__).split("_")[0].lower()
    try:
        return ModelSpec(
            name=name or str(cfg.get("architecture") or type(module).__name__),
            family=family,
            attention=attention or attention_kind(family),
            builder=_ModuleBuilder(module),
            input_size=size,  # type: ignore[arg-type]
            color_mode=mode,
            mean=mean_t,
            std=std_t,
            crop_pct=float(crop_pct if crop_pct is not None else cfg.get("crop_pct") or 1.0),
            interpolation=interpolation or str(cfg.get("interpolation") or "bilinear"),
            labels=label_set,
            source=f"python:{type(module).__module__}.{type(module).__qualname__}",
            default_weights="in-memory module",
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class _ModuleBuilder:
    """The builder of a user's module: returns it (the exporter works on a deep copy)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
        if num_classes is not None:
            raise ConfigError("num_classes cannot change the head of an nn.Module passed in; "
                              "build the module with its head and pass labels=[...]")
        return self.module


# ------------------------------------------------------------------------------------------------
# Labels


def read_labels(labels: Sequence[str] | str | os.PathLike) -> tuple[str, ...]:
    """Class names from a sequence, or a file: a JSON list, or one name a line (blank lines and a
    trailing newline ignored)."""
    if isinstance(labels, (str, os.PathLike)):
        p = Path(labels).expanduser()
        if not p.is_file():
            raise ConfigError(f"labels file {p} does not exist; pass a file with one class name a line "
                              "(or a JSON list)")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read labels file {p}: {exc}") from None
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except ValueError as exc:
                raise ConfigError(f"labels file {p} starts like JSON but is not valid JSON: {exc}") from None
        else:
            items = [line.strip() for line in text.splitlines() if line.strip()]
        where = f"labels file {p}"
    else:
        items, where = list(labels), "labels"
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise ConfigError(f"{where} must be a non-empty list of class names (strings)")
    return tuple(i.strip() for i in items)


def _classifier_heads(model: nn.Module, n: int) -> list[str]:
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n]


def checkpoint_head_classes(model: nn.Module, path: str | os.PathLike, n_model: int) -> int | None:
    """The number of classes a checkpoint's head has, when it differs from ``model``'s (``n_model``)
    only in its classifier layer(s); None when the checkpoint fits or differs elsewhere."""
    from edgevit.models.weights import fit_keys, load_state_dict

    state = fit_keys(model, load_state_dict(path))
    own = model.state_dict()
    mismatched = {k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)}
    if not mismatched:
        return None
    heads = _classifier_heads(model, n_model)
    sizes = set()
    for key in mismatched:
        owner = next((h for h in heads if key in (f"{h}.weight", f"{h}.bias")), None)
        if owner is None:
            return None
        sizes.add(int(state[key].shape[0]))
    return sizes.pop() if len(sizes) == 1 else None


# ------------------------------------------------------------------------------------------------
# The one door: load_model


@dataclass
class ResolvedModel:
    """A model ready to export: the float module (eval mode), its spec, its class names (as many
    as it has outputs), the weights it carries and notes on what was inferred."""

    module: Any
    spec: ModelSpec
    labels: tuple[str, ...]
    weights: str
    notes: list[str] = field(default_factory=list)


def _num_outputs(module, spec: ModelSpec) -> int:
    import torch

    x = torch.zeros(1, spec.in_chans, *spec.input_size)
    try:
        with torch.no_grad():
            y = module(x)
    except Exception as exc:  # noqa: BLE001 - the user's module: name what went wrong
        raise ModelError(f"{spec.name} does not run on a {tuple(x.shape)} input (input_size {spec.input_size}, "
                         f"{spec.in_chans} channel(s)): {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                         ) from None
    if hasattr(y, "logits"):
        y = y.logits
    if isinstance(y, (tuple, list)) and y and isinstance(y[0], torch.Tensor):
        y = y[0]
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelError(f"{spec.name} outputs {shape}, not a vector of class scores (1, N): edgevit exports image "
                         "classifiers; wrap the module so that it returns logits")
    return int(y.shape[1])


def load_model(
    source: str | nn.Module,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | str | os.PathLike | None = None,
    **module_facts: Any,
) -> ResolvedModel:
    """Build ``source`` with the user's classes and check labels against outputs.

    The head size is ``num_classes``, else the number of ``labels``, else what the ``weights``
    checkpoint's head has (or the class names it stores), else the source's own. The class names
    are ``labels``, else the checkpoint's, else the source's own when their number fits. A
    mismatch between names and outputs raises :class:`ConfigError` naming both numbers and the fix.
    ``module_facts`` (``input_size``, ``mean``, ``std``, ``name``, ...) describe an ``nn.Module``.
    """
    from edgevit.models.weights import checkpoint_classes, load_weights

    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive whole number, got {num_classes!r}")
    given = read_labels(labels) if labels is not None else None
    notes: list[str] = []
    if not isinstance(source, str):
        from torch import nn

        if not isinstance(source, nn.Module):
            raise ConfigError(f"a model is a catalog name, timm:NAME, hf:ORG/NAME, a save_pretrained folder or an "
                              f"nn.Module, not {type(source).__name__}")
        if num_classes is not None:
            raise ConfigError("num_classes cannot change the head of an nn.Module passed in; pass labels=[...]")
        spec = module_spec(source, labels=given, **module_facts)
        if pretrained:
            raise ConfigError("pretrained=True does not apply to an nn.Module passed in (it has its weights)")
        module = source
        if weights is not None:
            import copy

            module = copy.deepcopy(source)
            load_weights(module, weights)
        module.eval()
        tag = str(weights) if weights is not None else "in-memory module"
        resolved = ResolvedModel(module, spec, spec.label_names(), tag)
    else:
        if module_facts:
            raise ConfigError(f"{', '.join(sorted(module_facts))} describe an nn.Module; a named source "
                              f"({source}) brings its own")
        spec = get_spec(source)
        default_n = len(spec.label_names())
        stored = checkpoint_classes(weights) if weights is not None else None
        from_checkpoint = len(stored) if stored else None
        if from_checkpoint is None and weights is not None:
            probe = create_model(source)
            from_checkpoint = checkpoint_head_classes(probe, weights, _num_outputs(probe, spec))
            if from_checkpoint is not None:
                notes.append(f"{Path(weights).name} has a {from_checkpoint}-class head: the model is built with "
                             f"{from_checkpoint} outputs")
        if num_classes is not None:
            want = num_classes
        elif weights is not None:
            want = from_checkpoint
        elif given and len(given) != default_n:
            if pretrained:
                raise ConfigError(f"{spec.name}'s pretrained head has {default_n} outputs but {len(given)} labels "
                                  f"were given: pass --weights FILE (your fine-tuned checkpoint), or --num-classes "
                                  f"{len(given)} to replace the head with a new, untrained one")
            want = len(given)
        else:
            want = None
        if want is None and default_n == 0:
            raise ConfigError(f"{spec.name} is a feature model without a classifier head (its config has no classes): "
                              "pass --num-classes N (and --labels FILE with the N class names) to export a classifier")
        if want == default_n:
            want = None
        if want is not None and pretrained:
            notes.append(f"the pretrained head is replaced by a new {want}-class head (untrained)")
        module = create_model(source, pretrained=pretrained, weights=weights, num_classes=want)
        names = given or stored or spec.label_names()
        resolved = ResolvedModel(module, spec, tuple(names), module.edgevit_weights)
    n = _num_outputs(resolved.module, resolved.spec)
    generic = all(label == f"class_{i}" for i, label in enumerate(resolved.labels))
    if len(resolved.labels) != n and generic and not given and not (isinstance(source, str) and stored):
        # A source without class names (a headless timm config, --num-classes N): generic names,
        # said so; real names come from --labels FILE.
        resolved.labels = tuple(f"class_{i}" for i in range(n))
        notes.append(f"no class names are known for {resolved.spec.name}'s {n} outputs: generic names class_0.. "
                     "are stored; pass --labels FILE for real names")
    if len(resolved.labels) != n:
        if given:
            fix = (f"pass --labels with {n} names (one a line, or a JSON list), or --num-classes {len(given)} to "
                   f"build a {len(given)}-output head")
            where = "given"
        else:
            fix = f"pass --labels FILE with its {n} class names (one a line, or a JSON list)"
            where = "stored in the checkpoint" if isinstance(source, str) and stored else f"known for {resolved.spec.name}"
        raise ConfigError(f"{resolved.spec.name} has {n} outputs but {len(resolved.labels)} class names are {where}: "
                          f"{fix}")
    spec_notes = [note for note in resolved.spec.notes if not (given and "--labels" in note)]
    resolved.notes = spec_notes + notes
    if resolved.labels != resolved.spec.label_names():
        resolved.spec = replace(resolved.spec, labels=resolved.labels)
    return resolved


register_source_resolver(SourceResolver(is_source=is_source, spec=source_spec, hint=timm_hint))
