"""LeNet-5 for 32x32 digit images, its variants, and receptive-field tools.

The classic network (stride-1 convolutions without padding, 2x2 max pooling
with stride 2) maps a 1x32x32 image to 10 class scores::

    conv1 5x5, 6 maps     -> 6x28x28
    pool1 2x2 / 2         -> 6x14x14
    conv2 5x5, 16 maps    -> 16x10x10
    pool2 2x2 / 2         -> 16x5x5
    f1    400 -> 120
    f2    120 -> 84
    f3     84 -> 10

Variants cover the even/odd task (:class:`EvenOddLeNet5`), 68x68 inputs
(:class:`AdaptivePoolLeNet5`, :class:`ExtraStageLeNet5`) and a skip connection
(:class:`ResidualLeNet5`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.exam.activations import make_activation

LENET_INPUT_SIZE = 32
NUM_DIGIT_CLASSES = 10


def _pair_first(value: int | tuple[int, ...]) -> int:
    """Returns the first entry of a PyTorch int-or-tuple layer argument."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"only square kernels, strides and paddings are supported, got {value}")
        return int(value[0])
    return int(value)


class LeNet5(nn.Module):
    """Classic LeNet-5 (with a configurable activation) for 1x32x32 inputs.

    Args:
        num_classes: Number of output scores.
        in_channels: Number of image channels.
        activation: Activation name understood by
            :func:`models.exam.activations.make_activation`; ReLU trains faster than
            the original tanh.
    """

    #: Window layers in execution order, for receptive-field arithmetic.
    LAYER_ORDER: tuple[str, ...] = ("conv1", "pool1", "conv2", "pool2", "f1", "f2", "f3")

    def __init__(
        self, num_classes: int = NUM_DIGIT_CLASSES, in_channels: int = 1, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.f1 = nn.Linear(16 * 5 * 5, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, num_classes)
        self.activation = make_activation(activation)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the convolutional part; returns (B, 16, 5, 5) for 32x32 inputs."""
        x = self.pool1(self.activation(self.conv1(x)))
        return self.pool2(self.activation(self.conv2(x)))

    def classify(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Runs the fully connected part on (B, 16, 5, 5) feature maps."""
        x = feature_maps.flatten(1)  # (B, 16*5*5)
        x = self.activation(self.f1(x))
        x = self.activation(self.f2(x))
        return self.f3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class EvenOddLeNet5(nn.Module):
    """LeNet-5 answering "is the digit odd?" with one added 10 -> 1 layer.

    The single change is a logistic head ``parity = Linear(10, 1)`` on top of
    the ten digit scores; its sigmoid is the probability that the digit is
    odd. It adds 10 weights + 1 bias = 11 trainable parameters, the fewest of
    the trainable options, and keeps every existing layer (so a trained digit
    classifier can be reused as is):

    * replacing f3 (84 -> 10) by 84 -> 1 adds 85 new parameters (while
      removing 850) and throws away the trained output layer;
    * replacing f3 by 84 -> 2 with a softmax adds 170;
    * a 10 -> 2 softmax head adds 22, twice as many as 10 -> 1 for the same
      decision, because two logits carry only one degree of freedom.

    A fixed, untrained head (summing the softmax probabilities of 1, 3, 5, 7,
    9) would add 0 parameters but could not adapt to the new task.

    Args:
        backbone: The 10-class LeNet-5 to build on; a new one if omitted.
    """

    def __init__(self, backbone: LeNet5 | None = None) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else LeNet5()
        self.parity = nn.Linear(NUM_DIGIT_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the odd-digit logit, shape (B,)."""
        return self.parity(self.backbone(x)).squeeze(1)  # (B, 1) -> (B,)


class AdaptivePoolLeNet5(LeNet5):
    """LeNet-5 for any input size >= 16: adaptive max pooling before f1.

    First change for 68x68 inputs: the convolutions are size-agnostic, only f1
    expects 16x5x5 = 400 features. An ``AdaptiveMaxPool2d(5)`` after pool2 turns
    the 16x14x14 maps of a 68x68 image (or any other size) into 16x5x5, so
    every trainable layer and its parameter count stays as in LeNet-5.
    """

    LAYER_ORDER = ("conv1", "pool1", "conv2", "pool2", "adaptive_pool", "f1", "f2", "f3")

    def __init__(
        self, num_classes: int = NUM_DIGIT_CLASSES, in_channels: int = 1, activation: str = "relu"
    ) -> None:
        super().__init__(num_classes, in_channels, activation)
        self.adaptive_pool = nn.AdaptiveMaxPool2d(5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.adaptive_pool(super().features(x))


class ExtraStageLeNet5(LeNet5):
    """LeNet-5 for 68x68 inputs with a third convolution/pooling stage.

    Second change for 68x68 inputs: 68 -conv1-> 64 -pool-> 32 -conv2-> 28
    -pool-> 14 -conv3-> 10 -pool-> 5, so a ``16 -> 16`` 5x5 convolution plus a
    2x2 pooling brings the maps back to 16x5x5 and f1 keeps its 400 inputs.
    Unlike adaptive pooling this adds 16*16*25 + 16 = 6416 parameters and
    grows each f1 neuron's receptive field to the whole 68x68 image.
    """

    LAYER_ORDER = ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "f1", "f2", "f3")

    def __init__(
        self, num_classes: int = NUM_DIGIT_CLASSES, in_channels: int = 1, activation: str = "relu"
    ) -> None:
        super().__init__(num_classes, in_channels, activation)
        self.conv3 = nn.Conv2d(16, 16, kernel_size=5)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = super().features(x)
        return self.pool3(self.activation(self.conv3(x)))


class ResidualLeNet5(LeNet5):
    """LeNet-5 with a residual block after conv1.

    With ``h0 = act(conv1(x))`` (conv1's weight is the early weight ``w0``)
    the block computes ``h1 = h0 + branch(h0)``, where ``branch`` is
    conv3x3 -> act -> conv3x3 with padding 1. By the chain rule

        dL/dw0 = dL/dh1 (I + d branch/d h0) dh0/dw0,

    so the identity term ``dL/dh1 dh0/dw0`` reaches ``w0`` even when the
    branch's gradient vanishes (e.g. saturated or zero branch weights); in
    the plain network that product would be the branch's Jacobian alone.
    """

    # The branch is the longer of the two paths, so it bounds the receptive field.
    LAYER_ORDER = ("conv1", "branch.0", "branch.2", "pool1", "conv2", "pool2", "f1", "f2", "f3")

    def __init__(
        self, num_classes: int = NUM_DIGIT_CLASSES, in_channels: int = 1, activation: str = "relu"
    ) -> None:
        super().__init__(num_classes, in_channels, activation)
        self.branch = nn.Sequential(
            nn.Conv2d(6, 6, kernel_size=3, padding=1),
            make_activation(activation),
            nn.Conv2d(6, 6, kernel_size=3, padding=1),
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``h0 = act(conv1(x))``, shape (B, 6, 28, 28)."""
        return self.activation(self.conv1(x))

    def head(self, h1: torch.Tensor) -> torch.Tensor:
        """Runs everything after the residual block on ``h1``."""
        x = self.pool2(self.activation(self.conv2(self.pool1(h1))))
        return self.classify(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.stem(x)
        return self.head(h0 + self.branch(h0))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Counts a module's (trainable) parameters.

    Args:
        module: Module to inspect.
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        Total number of scalar parameters.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_output_shapes(model: LeNet5, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Records each named layer's output shape for one forward pass.

    Args:
        model: A LeNet-5 (or variant).
        x: Input batch.

    Returns:
        Layer name -> output shape, in execution order.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Linear)):

            def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                shapes[name] = tuple(output.shape)

            handles.append(child.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@dataclass(frozen=True)
class WindowLayer:
    """A sliding-window layer as seen by receptive-field arithmetic.

    Attributes:
        name: Layer name for reports.
        kernel: Kernel size (square).
        stride: Stride.
        padding: Zero padding on each side.
        dilation: Kernel dilation.
        fixed_output_size: Output side for layers whose output size does not
            follow from the window arithmetic (adaptive pooling).
    """

    name: str
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    fixed_output_size: int | None = None


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one unit after a layer.

    Attributes:
        name: Layer name.
        size: Side of the input square one unit sees (may exceed the input
            when padding is involved).
        jump: Distance in input pixels between neighbouring units.
        output_size: Side of the layer's output map, if the input size was given.
    """

    name: str
    size: int
    jump: int
    output_size: int | None = None


def receptive_fields(layers: Iterable[WindowLayer], input_size: int | None = None) -> list[ReceptiveField]:
    """Computes receptive fields through any stack of conv/pool layers.

    Uses ``r_out = r_in + (k_eff - 1) * j_in`` and ``j_out = j_in * s`` with the
    dilated kernel ``k_eff = d (k - 1) + 1``, starting from ``r = j = 1``.

    Args:
        layers: Layers in execution order.
        input_size: Side of the input; enables output-size bookkeeping.

    Returns:
        One entry per layer.

    Raises:
        ValueError: If a layer would produce an empty output.
    """
    size, jump, spatial = 1, 1, input_size
    fields = []
    for layer in layers:
        effective_kernel = layer.dilation * (layer.kernel - 1) + 1
        size += (effective_kernel - 1) * jump
        jump *= layer.stride
        if layer.fixed_output_size is not None:
            spatial = layer.fixed_output_size
        elif spatial is not None:
            spatial = (spatial + 2 * layer.padding - effective_kernel) // layer.stride + 1
            if spatial < 1:
                raise ValueError(f"layer {layer.name} leaves no output for input size {input_size}")
        fields.append(ReceptiveField(layer.name, size, jump, spatial))
    return fields


def _adaptive_window(in_size: int, out_size: int) -> tuple[int, int]:
    """Largest window and largest start-to-start step of adaptive pooling."""
    starts = [(index * in_size) // out_size for index in range(out_size)]
    ends = [-((-(index + 1) * in_size) // out_size) for index in range(out_size)]  # ceil division
    largest_window = max(end - start for start, end in zip(starts, ends, strict=True))
    largest_step = max(
        (later - earlier for earlier, later in zip(starts[:-1], starts[1:], strict=True)), default=1
    )
    return largest_window, largest_step


def window_layers(model: nn.Module, input_size: int, order: Sequence[str] | None = None) -> list[WindowLayer]:
    """Lists a model's conv/pool/linear layers as window layers.

    The first Linear layer after the convolutions is a window as big as the
    whole feature map it flattens; later Linear layers add nothing. Adaptive
    pooling windows differ in size, so it counts with its largest window and
    step, which makes the result an upper bound there.

    Args:
        model: The network.
        input_size: Side of the (square) input.
        order: Submodule names in execution order; defaults to the model's
            ``LAYER_ORDER`` attribute, else its direct children in
            registration order.

    Returns:
        Window layers in execution order.
    """
    if order is None:
        order = getattr(model, "LAYER_ORDER", None) or [name for name, _ in model.named_children()]
    layers: list[WindowLayer] = []
    spatial = input_size
    for name in order:
        child = model.get_submodule(name)
        if isinstance(child, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _pair_first(child.kernel_size)
            stride = _pair_first(child.stride)
            padding = _pair_first(child.padding)
            dilation = _pair_first(child.dilation) if hasattr(child, "dilation") else 1
            layers.append(WindowLayer(name, kernel, stride, padding, dilation))
        elif isinstance(child, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
            out = _pair_first(child.output_size)
            window, step = _adaptive_window(spatial, out)
            layers.append(WindowLayer(name, window, step, fixed_output_size=out))
        elif isinstance(child, nn.Linear):
            layers.append(WindowLayer(name, spatial, 1, fixed_output_size=1))
        else:
            continue
        spatial = receptive_fields(layers, input_size)[-1].output_size or 1
    return layers


def lenet_receptive_fields(
    model: nn.Module | None = None, input_size: int = LENET_INPUT_SIZE
) -> dict[str, int]:
    """Returns the receptive-field side of one unit after each LeNet layer.

    For the classic network: conv1 5, pool1 6, conv2 14, pool2 16, and f1 32,
    i.e. a neuron in f1 sees the whole 32x32 input.

    Args:
        model: LeNet-5 or a variant; the classic network if omitted.
        input_size: Input side.

    Returns:
        Layer name -> receptive field side, capped at the input size.
    """
    model = model if model is not None else LeNet5()
    fields = receptive_fields(window_layers(model, input_size), input_size)
    return {field.name: min(field.size, input_size) for field in fields}


@dataclass(frozen=True)
class PredictionAssessment:
    """How one model did on one example.

    Attributes:
        predicted_class: Arg-max class.
        correct: Whether the prediction equals the true class.
        true_class_probability: Probability given to the true class.
        cross_entropy: ``-ln p[true_class]`` (``inf`` when it is 0).
    """

    predicted_class: int
    correct: bool
    true_class_probability: float
    cross_entropy: float


def assess_predictions(
    probabilities: Mapping[str, Sequence[float]], true_class: int, tolerance: float = 1e-6
) -> dict[str, PredictionAssessment]:
    """Says which models predict the true class and each one's cross-entropy.

    Args:
        probabilities: Model name -> class probabilities (summing to 1).
        true_class: Index of the correct class.
        tolerance: Allowed deviation of each row's sum from 1.

    Returns:
        Model name -> assessment, in input order.

    Raises:
        ValueError: If a row does not sum to 1, has negative entries, or the
            true class is out of range.
    """
    assessments = {}
    for name, row in probabilities.items():
        values = [float(value) for value in row]
        if not 0 <= true_class < len(values):
            raise ValueError(
                f"true class {true_class} out of range for model {name} with {len(values)} classes"
            )
        if any(value < 0 for value in values) or abs(sum(values) - 1.0) > tolerance:
            raise ValueError(f"probabilities of model {name} are not a distribution (sum {sum(values):.6f})")
        # Ties resolve to the lowest index, like torch.argmax.
        predicted = max(range(len(values)), key=lambda index: (values[index], -index))
        probability = values[true_class]
        loss = -math.log(probability) if probability > 0 else math.inf
        assessments[name] = PredictionAssessment(predicted, predicted == true_class, probability, loss)
    return assessments


EXAM_TRUE_CLASS = 8
EXAM_PROBABILITIES: dict[str, tuple[float, ...]] = {
    "A": (0.45, 0, 0, 0, 0.05, 0, 0.05, 0.05, 0.40, 0),
    "B": (0.47, 0, 0, 0, 0, 0, 0.02, 0, 0.41, 0.10),
    "C": (0.30, 0, 0.05, 0, 0, 0, 0.20, 0, 0.35, 0.10),
}
