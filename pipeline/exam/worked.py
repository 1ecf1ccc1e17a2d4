"""Worked deep-learning examples behind cloudpose's layers, checked by autograd.

Every answer is computed twice, once from the hand formula and once by
PyTorch's autograd; :func:`agree` raises :class:`ExamCheckError` when the two
differ, so a wrong derivation cannot reach the report. The examples:

* Problem 3: a 1D CNN (Conv1D kernel 3 without padding -> MaxPool1D kernel 2
  stride 1 -> fully connected -> y, loss (y - y*)^2) worked forward and
  backward.
* Problem 5: a 3x3 sharpening kernel on a 4x4 input and the gradient with
  respect to the input as a full convolution with the flipped kernel.
* 2.6: two stacked linear layers collapse into one.
* Problem 1: executable statements about pooling, optimizers, attention,
  convolution shapes and activation gradients.

:func:`build_report` renders all answers as markdown (``cloudpose exam``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ArrayLike = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor


class ExamCheckError(AssertionError):
    """A hand-derived value disagrees with autograd."""


def _as_array(value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def agree(name: str, hand: ArrayLike, autograd: ArrayLike, tolerance: float = 1e-9) -> np.ndarray:
    """Checks that a hand-derived value equals the autograd one.

    Args:
        name: What is being compared, for the error message.
        hand: Value from the hand formula.
        autograd: Value computed by PyTorch.
        tolerance: Largest allowed absolute difference.

    Returns:
        The agreed value as a float64 array.

    Raises:
        ExamCheckError: If shapes or values differ.
    """
    hand_array, autograd_array = _as_array(hand), _as_array(autograd)
    if hand_array.shape != autograd_array.shape:
        raise ExamCheckError(
            f"{name}: hand shape {hand_array.shape} != autograd shape {autograd_array.shape}"
        )
    if not np.allclose(hand_array, autograd_array, rtol=0, atol=tolerance):
        raise ExamCheckError(f"{name}: hand {hand_array.tolist()} != autograd {autograd_array.tolist()}")
    return hand_array


# --------------------------------------------------------------------------- Problem 3


PROBLEM3_INPUT = (2.0, 3.0, 1.0, 2.0, -1.0)
PROBLEM3_CONV_WEIGHTS = (0.5, 1.5, 0.5)
PROBLEM3_FC_WEIGHTS = (-1.0, 3.0)
PROBLEM3_TARGET = 2.0
PROBLEM3_POOL_KERNEL = 2
PROBLEM3_POOL_STRIDE = 1


def conv1d_output_size(length: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a 1D convolution or pooling: ``(n + 2p - k) // s + 1``."""
    return (length + 2 * padding - kernel) // stride + 1


def pool_configurations(input_length: int, output_length: int, largest: int = 4) -> list[tuple[int, int]]:
    """All (kernel, stride) pairs, kernel >= 2, mapping one length to another.

    Args:
        input_length: Length before pooling.
        output_length: Length after pooling.
        largest: Largest kernel and stride tried.

    Returns:
        Matching ``(kernel, stride)`` pairs.
    """
    return [
        (kernel, stride)
        for kernel, stride in itertools.product(range(2, largest + 1), range(1, largest + 1))
        if kernel <= input_length and conv1d_output_size(input_length, kernel, stride) == output_length
    ]


def convolution_matrix(weights: Sequence[float], input_length: int) -> np.ndarray:
    """The (valid, stride-1) 1D cross-correlation as a matrix: ``z = C x``.

    Args:
        weights: Kernel, length k.
        input_length: Input length n.

    Returns:
        Matrix of shape (n - k + 1, n) whose row i holds the kernel at column i.
    """
    kernel = np.asarray(weights, dtype=np.float64)
    rows = input_length - len(kernel) + 1
    matrix = np.zeros((rows, input_length))
    for row in range(rows):
        matrix[row, row : row + len(kernel)] = kernel
    return matrix


@dataclass(frozen=True)
class Problem3Answers:
    """Every Problem 3 answer (all checked against autograd).

    Attributes:
        sizes_for_7: Lengths for a 7-dim input: input, conv, pool, output.
        pool_configurations: (kernel, stride) pairs that turn z (3) into m (2).
        z: Convolution output, shape (3,).
        m: Max-pooling output, shape (2,).
        y: Network output.
        loss: ``(y - y*)^2``.
        conv_matrix: The convolution as a 3x5 matrix.
        dloss_dy: ``2 (y - y*)``.
        dloss_dm: dL/dm for the given dL/dy = 2.
        dloss_dz: dL/dz for the given dL/dm = [2, 1].
        dloss_dc2: dL/dc2 (second kernel weight, c1..c3) for dL/dz = [1, 2, 3].
    """

    sizes_for_7: dict[str, int]
    pool_configurations: list[tuple[int, int]]
    z: np.ndarray
    m: np.ndarray
    y: float
    loss: float
    conv_matrix: np.ndarray
    dloss_dy: float
    dloss_dm: np.ndarray
    dloss_dz: np.ndarray
    dloss_dc2: float


def _problem3_network() -> tuple[nn.Conv1d, nn.MaxPool1d, nn.Linear]:
    conv = nn.Conv1d(1, 1, kernel_size=3, bias=False).double()
    pool = nn.MaxPool1d(kernel_size=PROBLEM3_POOL_KERNEL, stride=PROBLEM3_POOL_STRIDE)
    fully_connected = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(PROBLEM3_CONV_WEIGHTS).view(1, 1, 3))
        fully_connected.weight.copy_(torch.tensor(PROBLEM3_FC_WEIGHTS).view(1, 2))
    return conv, pool, fully_connected


def _problem3_sizes_for_7(conv: nn.Module, pool: nn.Module) -> dict[str, int]:
    """Layer sizes for a 7-dim input, by formula, checked by running the layers."""
    conv_length = conv1d_output_size(7, 3)
    pool_length = conv1d_output_size(conv_length, PROBLEM3_POOL_KERNEL, PROBLEM3_POOL_STRIDE)
    probe = pool(conv(torch.zeros(1, 1, 7, dtype=torch.float64)))
    agree("conv+pool length for 7 inputs", [conv_length, pool_length], [conv_length, probe.shape[-1]])
    return {"input": 7, "conv": conv_length, "pool": pool_length, "output": 1}


def solve_problem3() -> Problem3Answers:
    """Works Problem 3 forward and backward by hand and with autograd.

    The given upstream gradients (dL/dy = 2, dL/dm = [2, 1], dL/dz = [1, 2, 3])
    are hypothetical values the exam supplies for each step, so each step
    is back-propagated from its own given gradient.

    Returns:
        The answers.

    Raises:
        ExamCheckError: If a hand value disagrees with autograd.
    """
    x_values = np.array(PROBLEM3_INPUT)
    kernel = np.array(PROBLEM3_CONV_WEIGHTS)
    fc_weights = np.array(PROBLEM3_FC_WEIGHTS)
    conv, pool, fully_connected = _problem3_network()

    sizes_for_7 = _problem3_sizes_for_7(conv, pool)

    # Forward by hand.
    matrix = convolution_matrix(kernel, len(x_values))
    z_hand = matrix @ x_values
    windows = [range(start, start + PROBLEM3_POOL_KERNEL) for start in range(len(z_hand) - 1)]
    m_hand = np.array([max(z_hand[index] for index in window) for window in windows])
    y_hand = float(fc_weights @ m_hand)
    loss_hand = (y_hand - PROBLEM3_TARGET) ** 2

    # Forward by autograd.
    x = torch.tensor(x_values).view(1, 1, -1)  # (batch, channel, length)
    z = conv(x)
    z.retain_grad()
    m = pool(z)
    m.retain_grad()
    y = fully_connected(m.flatten(1))  # (1, 2) -> (1, 1)
    loss = (y - PROBLEM3_TARGET).square().sum()
    agree("z", z_hand, z.flatten())
    agree("m", m_hand, m.flatten())
    agree("y", y_hand, y.squeeze())
    agree("L", loss_hand, loss)
    agree("conv matrix", matrix @ x_values, nn.functional.conv1d(x, conv.weight).flatten())

    (dloss_dy,) = torch.autograd.grad(loss, y, retain_graph=True)
    dloss_dy_hand = 2 * (y_hand - PROBLEM3_TARGET)
    agree("dL/dy", dloss_dy_hand, dloss_dy.squeeze())

    (dloss_dm,) = torch.autograd.grad(y, m, grad_outputs=torch.full_like(y, 2.0), retain_graph=True)
    dloss_dm_hand = 2.0 * fc_weights
    agree("dL/dm", dloss_dm_hand, dloss_dm.flatten())

    given_dm = np.array([2.0, 1.0])
    (dloss_dz,) = torch.autograd.grad(
        m, z, grad_outputs=torch.tensor(given_dm).view(1, 1, 2), retain_graph=True
    )
    dloss_dz_hand = np.zeros_like(z_hand)
    for window, upstream in zip(windows, given_dm, strict=True):
        # Max pooling routes each upstream gradient to its window's arg-max.
        dloss_dz_hand[max(window, key=lambda index: z_hand[index])] += upstream
    agree("dL/dz", dloss_dz_hand, dloss_dz.flatten())

    given_dz = np.array([1.0, 2.0, 3.0])
    (dloss_dkernel,) = torch.autograd.grad(z, conv.weight, grad_outputs=torch.tensor(given_dz).view(1, 1, 3))
    # z_i = sum_j c_j x_{i+j-1}, so dz_i/dc_2 = x_{i+1}.
    dloss_dc2_hand = float(given_dz @ x_values[1:4])
    agree("dL/dc2", dloss_dc2_hand, dloss_dkernel.flatten()[1])

    return Problem3Answers(
        sizes_for_7=sizes_for_7,
        pool_configurations=pool_configurations(len(z_hand), len(fc_weights)),
        z=z_hand,
        m=m_hand,
        y=y_hand,
        loss=loss_hand,
        conv_matrix=matrix,
        dloss_dy=dloss_dy_hand,
        dloss_dm=dloss_dm_hand,
        dloss_dz=dloss_dz_hand,
        dloss_dc2=dloss_dc2_hand,
    )


# --------------------------------------------------------------------------- Problem 5


PROBLEM5_KERNEL = ((0.0, -1.0, 0.0), (-1.0, 5.0, -1.0), (0.0, -1.0, 0.0))
PROBLEM5_INPUT = ((1.0, 2.0, -1.0, -3.0), (-1.0, 3.0, 0.0, 2.0), (1.0, 1.0, 1.0, -2.0), (0.0, 2.0, 0.0, -3.0))
PROBLEM5_UPSTREAM = ((3.0, -1.0), (1.0, 2.0))
PROBLEM5_MEANING = (
    "sharpening: it is the identity plus the negative Laplacian (5 = 1 + 4 neighbours), "
    "so each pixel is pushed away from the mean of its 4 neighbours; its weights sum to 1, so flat "
    "regions pass unchanged while edges and fine detail are amplified"
)


def cross_correlate2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid, stride-1 2D cross-correlation (what deep-learning "convolution" computes)."""
    kernel_rows, kernel_columns = kernel.shape
    rows = image.shape[0] - kernel_rows + 1
    columns = image.shape[1] - kernel_columns + 1
    output = np.zeros((rows, columns))
    for row, column in itertools.product(range(rows), range(columns)):
        output[row, column] = np.sum(
            image[row : row + kernel_rows, column : column + kernel_columns] * kernel
        )
    return output


def input_gradient_full_convolution(upstream: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """dL/dX of a valid cross-correlation: full convolution of dL/dY with the kernel.

    A full convolution is a cross-correlation with the 180-degree flipped
    kernel over the upstream gradient zero-padded by ``k - 1`` on each side.

    Args:
        upstream: dL/dY, shape (H - k + 1, W - k + 1).
        kernel: Forward kernel, shape (k, k).

    Returns:
        dL/dX, shape (H, W).
    """
    pad_rows, pad_columns = kernel.shape[0] - 1, kernel.shape[1] - 1
    padded = np.pad(upstream, ((pad_rows, pad_rows), (pad_columns, pad_columns)))
    return cross_correlate2d(padded, kernel[::-1, ::-1])


@dataclass(frozen=True)
class Problem5Answers:
    """Problem 5 answers (checked against autograd).

    Attributes:
        output: The 2x2 feature map.
        meaning: What the kernel does.
        flat_region_output: Output on a constant image of 7s (unchanged: 7).
        input_gradient: dL/dX for the given upstream gradient, shape (4, 4).
    """

    output: np.ndarray
    meaning: str
    flat_region_output: float
    input_gradient: np.ndarray


def solve_problem5() -> Problem5Answers:
    """Applies the sharpening kernel and back-propagates to the input.

    Returns:
        The answers.

    Raises:
        ExamCheckError: If a hand value disagrees with autograd.
    """
    kernel = np.array(PROBLEM5_KERNEL)
    image = np.array(PROBLEM5_INPUT)
    upstream = np.array(PROBLEM5_UPSTREAM)

    output_hand = cross_correlate2d(image, kernel)
    x = torch.tensor(image).view(1, 1, 4, 4).requires_grad_(True)
    weight = torch.tensor(kernel).view(1, 1, 3, 3)
    output = nn.functional.conv2d(x, weight)
    agree("feature map", output_hand, output.view(2, 2))

    laplacian = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    agree("kernel = identity - Laplacian", kernel, identity - laplacian)
    flat_output = cross_correlate2d(np.full((3, 3), 7.0), kernel)

    gradient_hand = input_gradient_full_convolution(upstream, kernel)
    (gradient,) = torch.autograd.grad(output, x, grad_outputs=torch.tensor(upstream).view(1, 1, 2, 2))
    agree("dL/dX", gradient_hand, gradient.view(4, 4))
    return Problem5Answers(output_hand, PROBLEM5_MEANING, float(flat_output[0, 0]), gradient_hand)


# --------------------------------------------------------------------------- 2.6


def collapse_linear_layers(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``second(first(x))``: W = W2 W1, b = W2 b1 + b2.

    Without an activation in between, stacking linear layers adds parameters
    but no expressive power.

    Args:
        first: Layer applied first, weight (h, d).
        second: Layer applied second, weight (o, h).

    Returns:
        A new layer with weight (o, d).
    """
    combined = nn.Linear(first.in_features, second.out_features, dtype=first.weight.dtype)
    with torch.no_grad():
        combined.weight.copy_(second.weight @ first.weight)
        first_bias = (
            first.bias
            if first.bias is not None
            else torch.zeros(first.out_features, dtype=first.weight.dtype)
        )
        second_bias = second.bias if second.bias is not None else 0.0
        combined.bias.copy_(second.weight @ first_bias + second_bias)
    return combined


def check_linear_collapse(seed: int = 0, samples: int = 32) -> float:
    """Largest |stacked - collapsed| output difference on random data (float64).

    Raises:
        ExamCheckError: If the difference exceeds 1e-12.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = nn.Linear(5, 7).double()
    second = nn.Linear(7, 3).double()
    x = torch.randn(samples, 5, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        difference = (second(first(x)) - collapse_linear_layers(first, second)(x)).abs().max().item()
    if difference > 1e-12:
        raise ExamCheckError(f"stacked and collapsed linear layers differ by {difference}")
    return difference


# --------------------------------------------------------------------------- Problem 1


@dataclass(frozen=True)
class Statement:
    """An executable Problem 1 statement.

    Attributes:
        claim: The statement.
        holds: Whether the computation confirms it.
        evidence: The numbers that decide it.
    """

    claim: str
    holds: bool
    evidence: str


def average_pooling_statement() -> Statement:
    """Average pooling has no parameters and keeps the channel count."""
    pool = nn.AvgPool2d(2)
    output = pool(torch.randn(2, 7, 8, 8))
    parameters = sum(p.numel() for p in pool.parameters())
    return Statement(
        "average pooling has no trainable parameters and keeps the number of channels",
        parameters == 0 and output.shape[1] == 7,
        f"{parameters} parameters; (2, 7, 8, 8) -> {tuple(output.shape)}",
    )


def optimizer_state_tensors(optimizer_class: type[torch.optim.Optimizer], **options: float) -> int:
    """Parameter-shaped state tensors an optimizer keeps per parameter after one step."""
    parameter = nn.Parameter(torch.randn(3, 4))
    optimizer = optimizer_class([parameter], **options)
    parameter.grad = torch.randn(3, 4)
    optimizer.step()
    state = optimizer.state[parameter]
    return sum(
        1 for value in state.values() if isinstance(value, torch.Tensor) and value.shape == parameter.shape
    )


def optimizer_state_statement() -> Statement:
    """RMSProp keeps one state tensor per parameter, Adam two."""
    rmsprop = optimizer_state_tensors(torch.optim.RMSprop, lr=0.01)
    adam = optimizer_state_tensors(torch.optim.Adam, lr=0.01)
    return Statement(
        "RMSProp keeps one state tensor per parameter (mean square of gradients), "
        "Adam two (first and second moments)",
        rmsprop == 1 and adam == 2,
        f"RMSProp {rmsprop}, Adam {adam} parameter-shaped state tensors",
    )


def attention_permutation_statement(seed: int = 0) -> Statement:
    """Self-attention without positional encoding is permutation-equivariant."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attention = nn.MultiheadAttention(embed_dim=8, num_heads=2, batch_first=True).double().eval()
    tokens = torch.randn(1, 6, 8, generator=generator, dtype=torch.float64)
    permutation = torch.randperm(6, generator=generator)
    positions = torch.randn(1, 6, 8, generator=generator, dtype=torch.float64)

    def attend(sequence: torch.Tensor) -> torch.Tensor:
        return attention(sequence, sequence, sequence, need_weights=False)[0]

    with torch.no_grad():
        equivariance_error = (
            (attend(tokens)[:, permutation] - attend(tokens[:, permutation])).abs().max().item()
        )
        # With positions added after permuting, the outputs no longer just follow the permutation.
        positional_error = (
            (attend(tokens + positions)[:, permutation] - attend(tokens[:, permutation] + positions))
            .abs()
            .max()
            .item()
        )
    return Statement(
        "self-attention without positional encoding is permutation-equivariant",
        equivariance_error < 1e-12 and positional_error > 1e-3,
        f"max |f(Px) - P f(x)| = {equivariance_error:.1e}; with positional encoding {positional_error:.2f}",
    )


def conv_shape_statement(size: int = 10, kernel: int = 3, filters: int = 4) -> Statement:
    """A conv layer's output shape depends on N, k, m but not on C."""
    shapes = {
        channels: tuple(nn.Conv2d(channels, filters, kernel)(torch.zeros(1, channels, size, size)).shape[1:])
        for channels in (1, 3, 16)
    }
    expected = (filters, size - kernel + 1, size - kernel + 1)
    return Statement(
        "a convolution's output shape (m, N - k + 1, N - k + 1) depends on N, k and m "
        "but not on the input channels C",
        all(shape == expected for shape in shapes.values()),
        f"N={size}, k={kernel}, m={filters}: " + ", ".join(f"C={c} -> {s}" for c, s in shapes.items()),
    )


def _local_gradients(activation: nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64).requires_grad_(True)
    upstream = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    (downstream,) = torch.autograd.grad(activation(x), x, grad_outputs=upstream)
    return upstream, downstream


def tanh_gradient_statement() -> Statement:
    """The tanh backward pass never increases the gradient's magnitude."""
    upstream, downstream = _local_gradients(nn.Tanh())
    ratio = (downstream.abs() / upstream.abs()).max().item()
    return Statement(
        "the tanh backward pass never increases the gradient's magnitude (tanh' = 1 - tanh^2 <= 1)",
        bool(torch.all(downstream.abs() <= upstream.abs())),
        f"max |dL/dx| / |dL/dy| = {ratio:.6f} over x in [-10, 10]",
    )


def gradient_sign_statement() -> Statement:
    """Sigmoid, tanh and LeakyReLU never flip the gradient's sign."""
    minima = {}
    for name, activation in (
        ("sigmoid", nn.Sigmoid()),
        ("tanh", nn.Tanh()),
        ("LeakyReLU", nn.LeakyReLU(0.01)),
    ):
        upstream, downstream = _local_gradients(activation)
        minima[name] = (downstream * upstream).min().item()
    return Statement(
        "sigmoid, tanh and LeakyReLU never flip the gradient's sign (their derivatives are positive)",
        all(value >= 0 for value in minima.values()),
        "min dL/dx * dL/dy: " + ", ".join(f"{name} {value:.2e}" for name, value in minima.items()),
    )


def problem1_statements() -> list[Statement]:
    """Runs every executable Problem 1 statement."""
    return [
        average_pooling_statement(),
        optimizer_state_statement(),
        attention_permutation_statement(),
        conv_shape_statement(),
        tanh_gradient_statement(),
        gradient_sign_statement(),
    ]


# --------------------------------------------------------------------------- plots and report


def elu_plot_png(alphas: Sequence[float] = (0.5, 1.0, 2.0)) -> bytes:
    """Plots ELU for several alphas and its derivative next to ReLU, as PNG bytes.

    The derivative curves come from autograd through cloudpose's output-based
    ELU, so the plot also shows that backward pass at work.

    Args:
        alphas: ELU alphas to draw.

    Returns:
        PNG file contents.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.exam.activations import elu
    from pipeline.files import figure_png

    x = torch.linspace(-4, 3, 701, dtype=torch.float64)
    figure, (values_axes, derivative_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        for alpha in alphas:
            inputs = x.clone().requires_grad_(True)
            outputs = elu(inputs, alpha)
            (derivative,) = torch.autograd.grad(outputs.sum(), inputs)
            values_axes.plot(x, outputs.detach(), label=f"ELU, α={alpha:g}")
            derivative_axes.plot(x, derivative, label=f"ELU', α={alpha:g}")
        values_axes.plot(x, torch.relu(x), "k--", label="ReLU")
        derivative_axes.plot(x, (x > 0).double(), "k--", label="ReLU'")
        values_axes.set_title("ELU(x) = x if x ≥ 0, α(eˣ − 1) if x < 0")
        derivative_axes.set_title("derivative: 1 if x ≥ 0, ELU(x) + α if x < 0")
        for axes in (values_axes, derivative_axes):
            axes.axhline(0, color="grey", linewidth=0.5)
            axes.axvline(0, color="grey", linewidth=0.5)
            axes.set_xlabel("x")
            axes.legend()
            axes.grid(alpha=0.3)
    except BaseException:
        plt.close(figure)
        raise
    return figure_png(figure)


def write_elu_plot(path: Path | str, alphas: Sequence[float] = (0.5, 1.0, 2.0)) -> Path:
    """Writes :func:`elu_plot_png` to ``path`` atomically."""
    from pipeline.files import atomic_write_bytes

    return atomic_write_bytes(path, elu_plot_png(alphas))


def _numbers(values: ArrayLike) -> str:
    """Formats numbers compactly: 6 not 6.0, 0.5 stays 0.5."""
    array = _as_array(values)
    if array.ndim == 0:
        return f"{float(array):g}"
    return "[" + ", ".join(_numbers(row) for row in array) + "]"


def _matrix_block(matrix: np.ndarray) -> str:
    return "```\n" + "\n".join(" ".join(f"{value:6g}" for value in row) for row in matrix) + "\n```"


def _problem3_lines(p3: Problem3Answers) -> list[str]:
    """The report's Problem 3 section."""
    lines: list[str] = []
    lines += ["", "## Problem 3: 1D CNN", ""]
    lines.append(
        f"- Sizes for a 7-dim input: conv (k=3, no padding) {p3.sizes_for_7['conv']}, "
        f"max-pool (k={PROBLEM3_POOL_KERNEL}, s={PROBLEM3_POOL_STRIDE}) {p3.sizes_for_7['pool']}, "
        f"output {p3.sizes_for_7['output']}."
    )
    lines.append(
        "- Pooling that maps z (3 values) to m (2 values) with kernel ≥ 2: "
        f"(kernel, stride) = {p3.pool_configurations}."
    )
    lines.append(
        f"- Forward for x = {_numbers(PROBLEM3_INPUT)}, c = {_numbers(PROBLEM3_CONV_WEIGHTS)}, "
        f"w = {_numbers(PROBLEM3_FC_WEIGHTS)}, y* = {PROBLEM3_TARGET:g}: "
        f"z = {_numbers(p3.z)}, m = {_numbers(p3.m)}, y = {p3.y:g}, L = {p3.loss:g}."
    )
    lines.append("- The convolution as a 3×5 matrix (z = Cx):")
    lines += ["", _matrix_block(p3.conv_matrix), ""]
    lines.append(f"- dL/dy = 2(y − y*) = {p3.dloss_dy:g}.")
    lines.append(f"- dL/dm for dL/dy = 2: {_numbers(p3.dloss_dm)}.")
    lines.append(f"- dL/dz for dL/dm = [2, 1] (routed to each window's maximum): {_numbers(p3.dloss_dz)}.")
    lines.append(f"- dL/dc₂ for dL/dz = [1, 2, 3]: Σᵢ dL/dzᵢ · xᵢ₊₁ = 1·3 + 2·1 + 3·2 = {p3.dloss_dc2:g}.")
    return lines


def _lenet_lines() -> list[str]:
    """The report's Problem 4 section (LeNet-5)."""
    from models.exam.lenet import EvenOddLeNet5, LeNet5, count_parameters, lenet_receptive_fields

    lines: list[str] = []
    fields = lenet_receptive_fields()
    lenet_parameters = count_parameters(LeNet5())
    lines += ["", "## Problem 4: LeNet-5", ""]
    lines.append(
        f"- Receptive fields: conv1 {fields['conv1']}×{fields['conv1']}, "
        f"pool1 {fields['pool1']}×{fields['pool1']}, "
        f"conv2 {fields['conv2']}×{fields['conv2']}, pool2 {fields['pool2']}×{fields['pool2']}, "
        f"f1 {fields['f1']}×{fields['f1']} (the whole input)."
    )
    lines.append(
        f"- Parameters: {lenet_parameters}; the even/odd head (Linear 10→1) adds "
        f"{count_parameters(EvenOddLeNet5()) - lenet_parameters}."
    )
    return lines


def _problem5_lines(p5: Problem5Answers) -> list[str]:
    """The report's Problem 5 section."""
    lines: list[str] = []
    lines += ["", "## Problem 5: 3×3 kernel on a 4×4 input", ""]
    lines.append("- Output (stride 1, no padding):")
    lines += ["", _matrix_block(p5.output), ""]
    lines.append(f"- What the kernel does: {p5.meaning} (a constant 7 stays {p5.flat_region_output:g}).")
    lines.append(
        f"- dL/dX for dL/dY = {_numbers(PROBLEM5_UPSTREAM)}, "
        "a full convolution with the flipped kernel (autograd agrees):"
    )
    lines += ["", _matrix_block(p5.input_gradient)]
    return lines


def build_report(include_dimred: bool = False, dimred_epochs: int = 100) -> str:
    """Computes every worked answer and renders them as markdown.

    Args:
        include_dimred: Also train the PCA-vs-autoencoder comparison (7.2),
            which takes tens of seconds.
        dimred_epochs: Autoencoder epochs for that comparison.

    Returns:
        The report.
    """
    from models.exam.lenet import EXAM_PROBABILITIES, EXAM_TRUE_CLASS, assess_predictions

    problem3 = solve_problem3()
    problem5 = solve_problem5()
    collapse_difference = check_linear_collapse()
    statements = problem1_statements()

    lines = [
        "# cloudpose worked examples",
        "",
        "Each derivation is computed from its hand formula and checked against autograd; "
        "a disagreement stops the report.",
    ]
    lines += ["", "## Problem 1: executable statements", ""]
    lines += [f"- {'✔' if s.holds else '✘'} {s.claim} — {s.evidence}" for s in statements]

    lines += ["", "## 2.6: two linear layers are one", ""]
    lines.append(
        "W = W₂W₁ and b = W₂b₁ + b₂ reproduce the stacked layers: "
        f"max |difference| = {collapse_difference:.1e} on 32 random inputs (float64)."
    )

    lines += _problem3_lines(problem3)
    lines += ["", "## 4.2: which model predicts the true class", ""]
    lines += [
        f"True class {EXAM_TRUE_CLASS}.",
        "",
        "| model | predicted | correct | p(true) | cross-entropy |",
    ]
    lines.append("|---|---:|:---:|---:|---:|")
    for name, row in assess_predictions(EXAM_PROBABILITIES, EXAM_TRUE_CLASS).items():
        lines.append(
            f"| {name} | {row.predicted_class} | {'yes' if row.correct else 'no'} | "
            f"{row.true_class_probability:g} | {row.cross_entropy:.4f} |"
        )

    lines += _lenet_lines()
    lines += _problem5_lines(problem5)

    if include_dimred:
        from models.exam.dimred import compare_dimensionality_reduction, format_dimred_table

        lines += ["", "## 7.2: PCA versus autoencoder (scikit-learn digits, 64-dim, held-out MSE)", ""]
        lines.append(format_dimred_table(compare_dimensionality_reduction(epochs=dimred_epochs)))
    return "\n".join(lines) + "\n"
