"""Tests for the output-based ELU and the activation factory."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from models.exam.activations import ELU, EluFunction, elu, elu_derivative_from_output, make_activation


def _inputs_without_zero(count: int = 200, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, generator=generator, dtype=torch.float64) * 3
    # At exactly 0 torch's ELU gradient is alpha while ours is 1 (see below).
    return x[x.abs() > 1e-6]


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_value_and_gradient_match_torch(alpha: float) -> None:
    x = _inputs_without_zero()
    ours_input = x.clone().requires_grad_(True)
    reference_input = x.clone().requires_grad_(True)
    ours = elu(ours_input, alpha)
    reference = torch.nn.functional.elu(reference_input, alpha=alpha)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)

    upstream = torch.linspace(-2, 2, x.numel(), dtype=torch.float64)
    ours.backward(upstream)
    reference.backward(upstream)
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=0, atol=1e-12)


def test_hand_values() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
    expected = torch.tensor([2 * (np.exp(-2) - 1), 2 * (np.exp(-0.5) - 1), 0.0, 1.5], dtype=torch.float64)
    torch.testing.assert_close(elu(x, alpha=2.0), expected)
    torch.testing.assert_close(ELU(alpha=2.0)(x), expected)


def test_derivative_at_zero_is_one() -> None:
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    elu(x, alpha=3.0).sum().backward()
    assert x.grad.item() == 1.0


@pytest.mark.parametrize("alpha", [0.5, 1.7])
def test_derivative_from_output_formula(alpha: float) -> None:
    x = _inputs_without_zero(seed=1).requires_grad_(True)
    output = torch.nn.functional.elu(x, alpha=alpha)
    (autograd_derivative,) = torch.autograd.grad(output.sum(), x)
    from_output = elu_derivative_from_output(output.detach(), alpha)
    torch.testing.assert_close(from_output, autograd_derivative, rtol=0, atol=1e-12)
    negative = x.detach() < 0
    torch.testing.assert_close(from_output[negative], output.detach()[negative] + alpha)
    assert torch.all(from_output[~negative] == 1)


def test_backward_keeps_output_not_input() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.detach().clone())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = EluFunction.apply(x, 1.0)
    assert len(saved) == 1
    torch.testing.assert_close(saved[0], output.detach())
    assert not torch.equal(saved[0], x.detach())


def test_gradcheck_and_gradgradcheck() -> None:
    x = _inputs_without_zero(count=30, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: elu(t, 0.8), (x,))
    assert torch.autograd.gradgradcheck(lambda t: elu(t, 0.8), (x,))


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_rejects_non_positive_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        ELU(alpha)


def test_make_activation() -> None:
    assert isinstance(make_activation("relu"), nn.ReLU)
    elu_module = make_activation(" ELU ", alpha=0.5)
    assert isinstance(elu_module, ELU)
    assert elu_module.alpha == 0.5
    identity = make_activation("none")
    x = torch.tensor([-1.0, 2.0])
    assert torch.equal(identity(x), x)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        make_activation("gelu")


class _DirectElu(nn.Module):
    """Calls the autograd function directly so export must use its symbolic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return EluFunction.apply(x, 0.7)


@pytest.mark.parametrize("head", [lambda: ELU(0.7), _DirectElu])
def test_onnx_export_matches_onnxruntime(head) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), head()).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.randn(2, 4),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Elu"]
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 4) * 3
    (onnx_output,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert onnx_output.shape == (5, 8)
    np.testing.assert_allclose(onnx_output, expected, rtol=1e-5, atol=1e-5)
    assert (expected < 0).any()
