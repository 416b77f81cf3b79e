"""Edge rewrites that keep the math: applied to a model before any target converts it.

* :func:`reparameterize` folds train-time branches (FastViT/MobileOne-style blocks) into single
  convolutions, as timm does for deployment.
* :func:`fuse_input_stage` makes the model take the camera frame as it comes (uint8, N x H x W x 3)
  with the mean/std normalisation (and, for grayscale models, the RGB->luma conversion) folded into
  the weights of the convolution(s) that read the image, so the device runs no normalise pass.

Folding is exact, padding included: with zero padding in normalised space, the constant part of
the normalisation contributes a position-dependent map at the borders, which is precomputed once
for the fixed input size and added in place of the bias.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import ConfigError

__all__ = ["FoldedInputConv", "FusedInputModel", "LUMA_WEIGHTS", "fuse_input_stage", "input_convolutions", "reparameterize"]

# ITU-R 601-2 luma, as Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def reparameterize(model: nn.Module) -> nn.Module:
    """Fold multi-branch train-time blocks into their inference form (in place); returns model."""
    for module in list(model.modules()):
        fn = getattr(module, "reparameterize", None)
        if callable(fn):
            fn()
    return model


class FoldedInputConv(nn.Module):
    """A convolution reading raw [0, 255] pixels, equal to the original on normalised input."""

    def __init__(self, conv: nn.Conv2d, scale: torch.Tensor, offset: torch.Tensor, in_mix: torch.Tensor | None,
                 input_hw: tuple[int, int]) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ConfigError("fused input needs an ordinary (groups=1) convolution reading the image")
        w = conv.weight.detach().double()  # (out, cin, k, k)
        cin = w.shape[1]
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if isinstance(self.padding, str):
            raise ConfigError("fused input does not support string padding on the input convolution")
        if conv.padding_mode != "zeros":
            raise ConfigError(f"fused input does not support padding_mode={conv.padding_mode!r}")
        # Constant part of the normalisation (offset per model channel) on a ones image, zero padded.
        ones = torch.ones(1, cin, *input_hw, dtype=torch.float64) * offset.double().view(1, cin, 1, 1)
        const_map = F.conv2d(ones, w, None, self.stride, self.padding, self.dilation)
        bias = conv.bias.detach().double().view(1, -1, 1, 1) if conv.bias is not None else 0.0
        folded = w * scale.double().view(1, cin, 1, 1)
        if in_mix is not None:  # (cin_model=1) <- 3 frame channels
            folded = folded * in_mix.double().view(1, -1, 1, 1)
        self.weight = nn.Parameter(folded.float(), requires_grad=False)
        bias_map = const_map + bias
        # Where padding does not reach, the map is constant per channel: keep a plain bias then.
        flat = bias_map.flatten(2)
        if torch.allclose(flat, flat[..., :1].expand_as(flat), rtol=0, atol=1e-9):
            self.register_buffer("bias_map", bias_map[..., :1, :1].float())
        else:
            self.register_buffer("bias_map", bias_map.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation) + self.bias_map


class FusedInputModel(nn.Module):
    """uint8 N x H x W x C frames in, logits out; normalisation lives in the folded convolution(s)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.model(frame.permute(0, 3, 1, 2).to(torch.float32))


def input_convolutions(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of the modules that read the model's input tensor directly.

    Found from the ``torch.export`` graph; raises :class:`ConfigError` naming the op when
    something other than a 2-D convolution reads the image.
    """
    ep = torch.export.export(model, (example,))
    user_inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    names = []
    readers = list(placeholder.users)
    while readers:
        user = readers.pop()
        target = str(user.target)
        if any(op in target for op in _PASS_THROUGH):
            readers.extend(user.users)  # eval-mode dropout, clones: look through them
            continue
        if "conv2d" not in target and "convolution" not in target:
            raise ConfigError(
                f"fused input needs the image to be read by convolutions only, but {target} reads it; "
                "export without --fused-input"
            )
        stack = user.meta.get("nn_module_stack", {})
        if not stack:
            raise ConfigError("fused input: cannot map the input convolution back to its module")
        path = list(stack.values())[-1][0]
        names.append(_clean_path(path))
    return sorted(set(names))


_PASS_THROUGH = ("dropout", "clone", "alias", "contiguous", "identity")


def _clean_path(path: str) -> str:
    # nn_module_stack paths look like "L['self'].stem.conv" or "stem.conv"
    path = path.replace("L['self'].", "").replace("L['self']", "")
    out = []
    for part in path.split("."):
        if "[" in part:  # e.g. _modules['0']
            part = part.split("'")[1] if "'" in part else part
        out.append(part)
    return ".".join(p for p in out if p)


def fuse_input_stage(model: nn.Module, mean: Sequence[float], std: Sequence[float], input_size: tuple[int, int],
                     color_mode: str = "RGB") -> FusedInputModel:
    """Return a copy of ``model`` that takes uint8 N x H x W x 3 frames (see module docstring)."""
    model = copy.deepcopy(model).eval()
    cin = 1 if color_mode == "L" else 3
    example = torch.randn(1, cin, *input_size)
    names = input_convolutions(model, example)
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (255.0 * std_t)
    offset = -mean_t / std_t
    in_mix = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64) if color_mode == "L" else None
    for name in names:
        conv = model.get_submodule(name)
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"fused input: {name} reads the image but is {type(conv).__name__}, not Conv2d")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FoldedInputConv(conv, scale, offset, in_mix, input_size))
    return FusedInputModel(model).eval()
