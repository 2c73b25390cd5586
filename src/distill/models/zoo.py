"""A small model zoo (MLP, CNN family, CIFAR-style ResNet) and user models by import path.

Every model maps a batch of inputs to class logits (B, num_classes).
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable

import torch
from torch import nn

from distill.core.errors import ModelError, did_you_mean
from distill.models.config import ModelConfig
from distill.models.encoders import (
    hf_encoder,  # transformers itself is imported only when one is built
)


class MLP(nn.Module):
    """Flatten, then Linear-ReLU(-Dropout) blocks of the given widths, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (800, 800),
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CNN(nn.Module):
    """Stages of `convs` 3×3 conv-BN-ReLU layers, each followed by 2×2 max-pooling, then an MLP head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: list[int] = (32, 64),
                 fc: int = 128, dropout: float = 0.0, convs: int = 2):
        super().__init__()
        cin, h, w = input_shape
        stages = []
        for width in widths:
            stages += [_conv_bn(cin if i == 0 else width, width) for i in range(convs)] + [nn.MaxPool2d(2)]
            cin, h, w = width, h // 2, w // 2
        if h < 1 or w < 1:
            raise ModelError(f"cnn: {len(widths)} stages pool a {input_shape} input below 1 pixel; "
                             "use fewer widths.")
        self.features = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * h * w, fc), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fc, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n+2, three stages of width w, 2w, 4w."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"resnet: depth must be 6n+2 (8, 14, 20, 32, 56), got {depth}.")
        n = (depth - 2) // 6
        layers: list[nn.Module] = [_conv_bn(input_shape[0], width)]
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet,
                                                      "hf_encoder": hf_encoder}


def build_model(spec: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None = None) -> nn.Module:
    """Build a zoo model or a user's `module:Class`, passing input_shape/num_classes if accepted.

    With `seed`, the initial weights depend on it alone (the global RNG is left untouched).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(spec, input_shape, num_classes)
    factory = _resolve(spec.arch)
    kwargs = dict(spec.kwargs)
    params = inspect.signature(factory).parameters
    for name, value in (("input_shape", input_shape), ("num_classes", num_classes)):
        if name in params and name not in kwargs:
            kwargs[name] = value
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(f"Cannot build `{spec.arch}` with kwargs {spec.kwargs}: {exc}. "
                         f"Accepted arguments: {list(params)}.") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"arch `{spec.arch}` returned a {type(model).__name__}, not a torch.nn.Module; "
                         "name your model class (`package.module:Class`) or a function returning one.")
    return model


def _resolve(arch: str) -> Callable[..., nn.Module]:
    if ":" not in arch:
        if arch not in ARCHITECTURES:
            raise ModelError(f"Unknown model arch `{arch}`.{did_you_mean(arch, ARCHITECTURES)} "
                             f"Zoo: {sorted(ARCHITECTURES)}, or give your own as `package.module:Class`.")
        return ARCHITECTURES[arch]
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"Cannot import `{module_name}` for arch `{arch}`: {exc}. "
                         "Is the module on PYTHONPATH?") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ModelError(f"`{module_name}` has no `{attr}`.{did_you_mean(attr, names)}")
    return _model_factory(arch, getattr(module, attr))


def _model_factory(arch: str, found: Any) -> Callable[..., nn.Module]:
    """`found` if it can build a model: an nn.Module class, or a Python function (checked on return).

    Anything else (another class, a builtin such as `os:system`, a constant) is refused before it
    is called, so a config cannot use `arch` to run arbitrary library code.
    """
    if inspect.isclass(found) and issubclass(found, nn.Module):
        return found
    if inspect.isfunction(found):
        return found
    what = f"class {found.__name__}" if inspect.isclass(found) else type(found).__name__
    raise ModelError(f"arch `{arch}` names a {what}, not a torch.nn.Module class; give your model as "
                     "`package.module:Class` (an nn.Module subclass) or a Python function returning one.")


def channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Store a convolutional model's 4-D weights channels-last (NHWC), the layout oneDNN and cuDNN
    run fastest: on this CPU the Fashion-MNIST CNN's forward takes half the time, its max-pooling a
    tenth. Values and the state dict are unchanged (checkpoints are written contiguous).

    Left as they are, returning False: models without `nn.Conv2d`, inputs that are not 4-D, and
    models whose forward needs the default layout (e.g. `.view` on a convolution's output), found
    by one dry forward of `example` in eval mode.
    """
    if example.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    was_training = model.training
    model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model.eval()(example[:2])
        return True
    except Exception:  # any failure here is reported, clearly, by the caller's own checks
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live; the CPU for models with none (e.g. int8-quantized ones)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, an object with `.logits` (Hugging Face), or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"Model returned {type(output).__name__}; return logits, a dict with a 'logits' tensor, "
                     "or an object with `.logits`.")


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights, e.g. an LM's input and output embeddings, counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
