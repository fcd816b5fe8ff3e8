"""Models built by name: respkd's own small nets, plus torchvision and timm architectures.

``build_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[1200, 1200])`` builds our own nets, registered
with :func:`register_model`; ``"torchvision.resnet18"`` and ``"timm.resnet18"`` build those libraries' models
(random init: no pretrained weights are downloaded; local weights go in through a config's ``init`` or
``teacher.weights``, see :mod:`respkd.weights`).
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from respkd.errors import RespkdError, closest_name, first_line, quote, shorten

__all__ = [
    "MAX_LAYERS", "MAX_WIDTH", "MLP", "BasicBlock", "CifarResNet", "MaxNormMixin", "ModelFactory", "PackedDropout",
    "SmallCNN", "accepts_option", "build_model", "check_number", "check_widths", "cnn", "count_macs", "count_parameters",
    "dropout_keep_mask", "list_models", "mlp", "register_model", "resnet32x4", "resnet8x4", "torchvision_weights",
]

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}

# The factories' bounds on their options. 65,536 units on a flattened 224x224 RGB input is already 10^10 weights;
# a width of 0 would build an empty layer that torch only warns about, and train it.
MAX_WIDTH = 2**16
MAX_LAYERS = 100


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its function name so configs can build it by name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_widths(option: str, widths: Any, at_least: int = 0) -> list[int]:
    """``widths`` as a list of layer sizes: ``at_least`` to ``MAX_LAYERS`` integers from 1 to ``MAX_WIDTH``."""
    if not isinstance(widths, (list, tuple)) or any(type(w) is not int for w in widths):  # a bool is no width
        raise ValueError(f"'{option}' must be a list of integers (layer widths), got {quote(widths)}")
    if not at_least <= len(widths) <= MAX_LAYERS:
        raise ValueError(f"'{option}' must list {at_least} to {MAX_LAYERS} layers, got {len(widths)}")
    if bad := [w for w in widths if not 1 <= w <= MAX_WIDTH]:
        raise ValueError(f"'{option}' widths must be from 1 to {MAX_WIDTH}, got {quote(bad[0])}")
    return list(widths)


def check_number(option: str, value: Any, low: float, high: float, high_included: bool = False) -> float:
    """``value`` as a float from ``low`` (included) to ``high`` (excluded unless ``high_included``)."""
    fits = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    if not (fits and (value <= high if high_included else value < high)):  # NaN fails every comparison
        raise ValueError(f"'{option}' must be a number from {low:g} to {'' if high_included else 'below '}{high:g}, "
                         f"got {quote(value)}")
    return float(value)


def accepts_option(name: str, option: str) -> bool:
    """Whether the registered model ``name`` takes ``option`` (e.g. ``hidden``), checked without building it."""
    factory = _REGISTRY.get(name)
    return factory is not None and option in inspect.signature(factory).parameters


class MaxNormMixin:
    """Max-norm constraint (Srebro & Shraibman; Hinton et al. 2012's dropout recipe, used for the paper's teacher).

    After each optimizer step the engine calls :meth:`apply_constraints`, which rescales every hidden unit's
    incoming weight vector to an L2 norm of at most ``max_norm``.
    """

    max_norm: float | None
    constrained: list[nn.Linear]

    @torch.no_grad()
    def apply_constraints(self) -> None:
        if self.max_norm:
            for layer in self.constrained:
                layer.weight.copy_(torch.renorm(layer.weight, p=2, dim=0, maxnorm=self.max_norm))


def dropout_keep_mask(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """A CPU bool mask of ``shape``, each element True (kept) with probability ``1 - p`` rounded to 2^-16.

    Drawn from torch's default generator as 64-bit words cut into four 16-bit chunks, each compared with a threshold:
    one draw per four elements where ``bernoulli_`` makes one (slow, double-precision) draw per element. On this
    project's CPUs that is 10x faster, and dropout's masks were a quarter of the paper teacher's epoch.
    """
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits uniform
    chunks = words.view(torch.int16)[:n].view(shape)  # uniform on [-2^15, 2^15)
    return chunks < round((1 - p) * 2**16) - 2**15


class PackedDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose CPU masks come from :func:`dropout_keep_mask` (16 bits of a random word each).

    The same module otherwise (same ``p``, no state, the same scaling by ``1 / (1 - p)`` in the input's dtype, and
    the same default generator, so seeding, resume and per-process streams treat it alike); tensors on an
    accelerator go through torch's own fused kernel, which is already fast there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p in (0, 1) or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        keep = dropout_keep_mask(tuple(x.shape), self.p)
        return x * keep * (1 / (1 - self.p))


class MLP(MaxNormMixin, nn.Module):
    """Fully connected ReLU net: flatten -> [dropout -> linear -> relu]* -> dropout -> linear.

    Args:
        in_features: input size after flattening (784 for MNIST).
        hidden: widths of the hidden layers, e.g. ``[1200, 1200]``.
        num_classes: output size.
        dropout_input: dropout on the input pixels (the paper's teacher: 0.2).
        dropout_hidden: dropout on each hidden layer's output (the paper's teacher: 0.5).
        max_norm: max L2 norm of each hidden unit's incoming weights, None for no constraint.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        num_classes: int,
        dropout_input: float = 0.0,
        dropout_hidden: float = 0.0,
        max_norm: float | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        self.constrained = []
        width, dropout = in_features, dropout_input  # dropout acts on each linear layer's input
        for out in hidden:
            if dropout:
                layers.append(PackedDropout(dropout))
            linear = nn.Linear(width, out)
            self.constrained.append(linear)
            layers += [linear, nn.ReLU(inplace=True)]
            width, dropout = out, dropout_hidden
        if dropout:
            layers.append(PackedDropout(dropout))
        self.classifier = nn.Linear(width, num_classes)
        self.features = nn.Sequential(*layers)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def mlp(
    num_classes: int,
    in_shape: tuple[int, ...],
    hidden: list[int] = (1200, 1200),
    dropout_input: float = 0.0,
    dropout_hidden: float = 0.0,
    max_norm: float | None = None,
) -> nn.Module:
    if max_norm is not None and check_number("max_norm", max_norm, 0, 1000, high_included=True) == 0:
        raise ValueError("'max_norm' must be above 0 (leave it out for no constraint)")
    return MLP(math.prod(in_shape), check_widths("hidden", hidden), num_classes,
               check_number("dropout_input", dropout_input, 0, 1), check_number("dropout_hidden", dropout_hidden, 0, 1),
               max_norm)


class SmallCNN(nn.Module):
    """conv-BN-ReLU blocks with 2x2 max-pooling between them, global average pooling, then a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            if i:
                blocks.append(nn.MaxPool2d(2))
            blocks += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = PackedDropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


@register_model
def cnn(
    num_classes: int, in_shape: tuple[int, ...], channels: list[int] = (32, 64, 128), dropout: float = 0.0
) -> nn.Module:
    channels = check_widths("channels", channels, at_least=1)
    side = min(in_shape[1:])
    if 2 ** (len(channels) - 1) > side:  # each block after the first halves the resolution
        raise ValueError(f"'channels' lists {len(channels)} blocks, but {side}-pixel inputs allow at most "
                         f"{side.bit_length()} (each block after the first halves the resolution)")
    return SmallCNN(in_shape[0], num_classes, channels, check_number("dropout", dropout, 0, 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a 1x1 conv-BN where the shape changes), ReLU after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of the distillation benchmarks (RepDistiller, mdistiller; He et al. 2016, section 4.2).

    A 3x3 stem of ``widths[0]`` channels, then three stages of ``(depth - 2) / 6`` basic blocks of ``widths[1:]``
    channels (strides 1, 2, 2), global average pooling and a linear layer. Module names follow RepDistiller's
    ``models/resnet.py`` (``conv1``, ``bn1``, ``layer1``-``layer3``, ``fc``), so its state dicts map key for key; the
    pooling is adaptive instead of its fixed 8x8, which is the same at 32x32 inputs and also works at other sizes.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet of basic blocks has depth 6n + 2, not {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            layers = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # He init for convs, BN at identity: as RepDistiller
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet8x4(num_classes: int, in_shape: tuple[int, ...]) -> nn.Module:
    """The usual CIFAR-100 student (1.23M parameters for 100 classes)."""
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_shape[0])


@register_model
def resnet32x4(num_classes: int, in_shape: tuple[int, ...]) -> nn.Module:
    """The usual CIFAR-100 teacher of resnet8x4 (7.43M parameters for 100 classes)."""
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_shape[0])


def _build_torchvision(arch: str, num_classes: int, in_shape: tuple[int, ...], weights: str | None = None,
                       **kwargs) -> nn.Module:
    import torchvision.models as tvm

    try:
        factory = tvm.get_model_builder(arch)
    except ValueError:
        raise RespkdError(f"unknown torchvision model '{shorten(arch)}'") from None
    if "pretrained" in kwargs:
        raise RespkdError(f"model 'torchvision.{arch}': 'pretrained' is timm's option; torchvision models take "
                          "'weights: NAME' (e.g. IMAGENET1K_V1, or DEFAULT)")
    if weights is None:
        model = factory(weights=None, num_classes=num_classes, **kwargs)
        if in_shape[0] != 3:
            _adapt_first_conv(model, in_shape[0])
        return model
    state = _torchvision_state_dict(arch, weights, num_classes, in_shape)
    model = factory(weights=None, num_classes=num_classes, **kwargs)
    model.load_state_dict(state)
    return model


def torchvision_weights(arch: str, name: Any) -> Any:
    """The member ``name`` of torchvision's weights enum for ``arch`` (e.g. ``IMAGENET1K_V1``, ``DEFAULT``)."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except ValueError:
        raise RespkdError(f"torchvision.{arch} has no pretrained weights") from None
    if not isinstance(name, str) or name not in enum.__members__:
        raise RespkdError(f"torchvision.{arch} has no weights {quote(name)}: choose {', '.join(enum.__members__)}")
    return enum[name]


def _torchvision_state_dict(arch: str, name: str, num_classes: int, in_shape: tuple[int, ...]
                            ) -> dict[str, torch.Tensor]:
    """The state dict of torchvision's ``name`` weights for ``arch``, checked against the classes and channels asked
    for, from torch hub's cache (``$TORCH_HOME/hub/checkpoints``, downloaded there with its hash checked on first
    use), read with ``weights_only=True``: torchvision's own loader would unpickle the cached file unrestricted."""
    weights = torchvision_weights(arch, name)
    classes = len(weights.meta.get("categories") or [])
    if classes and classes != num_classes:
        raise RespkdError(f"torchvision.{arch}'s {name} weights have {classes} classes, the data has {num_classes}")
    if in_shape[0] != 3:
        raise RespkdError(f"torchvision.{arch}'s {name} weights take RGB inputs, the data has {in_shape[0]} "
                          "channel(s); for a teacher, set teacher.input to give it RGB")
    try:
        with warnings.catch_warnings():  # a cache file that is no torch.save file is refused below, in one line
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True,
                                                      weights_only=True)
    except Exception as err:  # noqa: BLE001 - offline (URLError), a damaged cache file, a refused pickle
        raise RespkdError(f"torchvision.{arch}'s {name} weights could not be read from {weights.url} or torch hub's "
                          f"cache ({_described(err)})") from None


def _build_timm(arch: str, num_classes: int, in_shape: tuple[int, ...], pretrained: bool = False,
                **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise RespkdError("timm models need the 'timm' package: pip install timm") from None
    if not timm.is_model(arch):
        raise RespkdError(f"unknown timm model '{shorten(arch)}'")
    if not isinstance(pretrained, bool):
        raise RespkdError(f"model 'timm.{arch}': 'pretrained' must be true or false, got {quote(pretrained)}")
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_shape[0], **kwargs)
    # timm's machinery: the hub (or a local file: pretrained_cfg_overlay={"file": ...}), the first conv adapted to
    # in_chans, and a new classifier when num_classes differs from the weights' (model.pretrained_cfg["num_classes"]).
    overlay = kwargs.get("pretrained_cfg_overlay")
    file = overlay.get("file") if isinstance(overlay, dict) else None
    if file is not None and not Path(str(file)).is_file():  # timm would log an error line, then raise a bare one
        raise RespkdError(f"timm.{arch}: pretrained_cfg_overlay file {shorten(str(file))} does not exist")
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_shape[0], **kwargs)
    except (TypeError, ValueError):
        raise  # an option timm refuses: build_model's one line
    except Exception as err:  # noqa: BLE001 - offline, a missing local file, a damaged download
        raise RespkdError(f"timm.{arch}: its pretrained weights could not be loaded ({_described(err)})") from None


def _described(err: BaseException) -> str:
    """``Type: first line`` of an exception, or its type alone when it has no message."""
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel conv of a torchvision model so it accepts ``in_channels`` (e.g. grey images)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(
                    parent,
                    name,
                    nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                              bias=child.bias is not None),
                )
                return


def build_model(name: str, num_classes: int, in_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered respkd model (``mlp``, ``cnn``), ``torchvision.<arch>`` or ``timm.<arch>``.
        num_classes: size of the output layer.
        in_shape: ``(channels, height, width)`` of one input.
        **kwargs: the model's own options (from the config's ``model`` section).
    """
    library, _, arch = name.partition(".")
    try:
        if library == "torchvision" and arch:
            return _build_torchvision(arch, num_classes, in_shape, **kwargs)
        if library == "timm" and arch:
            return _build_timm(arch, num_classes, in_shape, **kwargs)
        if name in _REGISTRY:
            factory = _REGISTRY[name]
            _check_options(name, factory, kwargs)
            return factory(num_classes=num_classes, in_shape=in_shape, **kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        # an option the model does not take, or a value its layers refuse (dropout 2.0, a width of -5 or 10**30)
        raise RespkdError(f"model '{shorten(name)}': {first_line(err)}") from None
    raise RespkdError(
        f"unknown model '{shorten(name)}': use one of {', '.join(list_models())}, 'torchvision.<arch>' or 'timm.<arch>'"
    )


def _check_options(name: str, factory: ModelFactory, options: dict) -> None:
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("num_classes", "in_shape")]
    for key in options:
        if key not in accepted:
            close = closest_name(key, accepted)
            hint = f" (did you mean '{close}'?)" if close else f" (options: {', '.join(accepted)})"
            raise RespkdError(f"model '{name}' has no option '{shorten(key)}'{hint}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one input (the convention of timm's and MMRazor's FLOPs columns).

    Measured with ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add as 2 FLOPs; we halve it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return counter.get_total_flops() // 2
