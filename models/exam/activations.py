"""Activation functions for cloudpose models, with an output-based ELU.

ELU (exponential linear unit) is

    ELU(x) = x               for x >= 0
    ELU(x) = alpha (e^x - 1)  for x < 0

and its derivative can be written in terms of the output y = ELU(x) alone:

    ELU'(x) = 1          for x >= 0
    ELU'(x) = y + alpha  for x < 0      (because alpha e^x = y + alpha)

so the backward pass only needs the output, which the next layer keeps alive
anyway, instead of a separate copy of the input.

Compared with ReLU, ELU has two advantages and one disadvantage:

* Advantage 1: the gradient for negative inputs is ``y + alpha > 0`` instead
  of 0, so units cannot "die" (get stuck with zero gradient forever).
* Advantage 2: negative outputs (down to ``-alpha``) pull the mean activation
  towards zero, which reduces the bias shift between layers and usually speeds
  up learning; for ``alpha = 1`` the function is also smooth at 0.
* Disadvantage: it needs an exponential, so it is slower to compute than
  ``max(0, x)``, and it saturates to ``-alpha`` for very negative inputs, so it
  does not produce the exact zeros (sparse activations) that ReLU does.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATION_NAMES: tuple[str, ...] = ("relu", "elu", "none")


class EluFunction(torch.autograd.Function):
    """ELU as an autograd function that saves its output, not its input."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        output = torch.where(x >= 0, x, alpha * torch.expm1(x))
        ctx.alpha = alpha
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        # With alpha > 0 the output is negative exactly when the input is, so the
        # output alone tells which branch of the derivative applies.
        local_gradient = torch.where(output >= 0, torch.ones_like(output), output + ctx.alpha)
        return grad_output * local_gradient, None

    @staticmethod
    def symbolic(graph: torch.Graph, x: torch.Value, alpha: float) -> torch.Value:
        """Maps the function onto the ONNX ``Elu`` operator for TorchScript export."""
        return graph.op("Elu", x, alpha_f=float(alpha))


def _check_alpha(alpha: float) -> float:
    if not alpha > 0:
        # The output-based derivative needs sign(output) == sign(input).
        raise ValueError(f"ELU alpha must be > 0, got {alpha}")
    return float(alpha)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Applies ELU element-wise with the output-based backward pass.

    Args:
        x: Input tensor of any shape.
        alpha: Saturation value for negative inputs; must be positive.

    Returns:
        Tensor of the same shape as ``x``.

    Raises:
        ValueError: If ``alpha`` is not positive.
    """
    alpha = _check_alpha(alpha)
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # Exporters and compilers understand the built-in op better than a
        # custom autograd function; the values are identical.
        return torch.nn.functional.elu(x, alpha=alpha)
    return EluFunction.apply(x, alpha)


def elu_derivative_from_output(output: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Returns ELU'(x) computed from y = ELU(x) only.

    Args:
        output: ELU outputs ``y``.
        alpha: The ``alpha`` the outputs were computed with.

    Returns:
        ``1`` where ``y >= 0`` and ``y + alpha`` elsewhere.
    """
    alpha = _check_alpha(alpha)
    return torch.where(output >= 0, torch.ones_like(output), output + alpha)


class ELU(nn.Module):
    """ELU module whose backward pass keeps the output instead of the input.

    Args:
        alpha: Saturation value for negative inputs; must be positive.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def make_activation(name: str, *, alpha: float = 1.0) -> nn.Module:
    """Builds an activation module from its configuration name.

    Args:
        name: One of ``"relu"``, ``"elu"`` or ``"none"`` (identity); case and
            surrounding spaces are ignored.
        alpha: ELU's ``alpha``; ignored by the other activations.

    Returns:
        A fresh activation module.

    Raises:
        ValueError: If ``name`` is not a known activation.
    """
    key = name.strip().lower()
    if key == "relu":
        return nn.ReLU()
    if key == "elu":
        return ELU(alpha)
    if key == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATION_NAMES)}")
