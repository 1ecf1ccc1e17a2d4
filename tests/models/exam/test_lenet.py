"""Tests for LeNet-5, its variants, receptive fields and the 4.2 table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.exam.lenet import (
    EXAM_PROBABILITIES,
    EXAM_TRUE_CLASS,
    AdaptivePoolLeNet5,
    EvenOddLeNet5,
    ExtraStageLeNet5,
    LeNet5,
    ResidualLeNet5,
    WindowLayer,
    assess_predictions,
    count_parameters,
    layer_output_shapes,
    lenet_receptive_fields,
    receptive_fields,
)


def test_layer_output_shapes() -> None:
    shapes = layer_output_shapes(LeNet5(), torch.zeros(3, 1, 32, 32))
    assert shapes == {
        "conv1": (3, 6, 28, 28),
        "pool1": (3, 6, 14, 14),
        "conv2": (3, 16, 10, 10),
        "pool2": (3, 16, 5, 5),
        "f1": (3, 120),
        "f2": (3, 84),
        "f3": (3, 10),
    }


def test_parameter_count_per_layer() -> None:
    model = LeNet5()
    per_layer = {name: count_parameters(child) for name, child in model.named_children()}
    assert per_layer == {
        "conv1": 6 * 25 + 6,
        "pool1": 0,
        "conv2": 16 * 6 * 25 + 16,
        "pool2": 0,
        "f1": 400 * 120 + 120,
        "f2": 120 * 84 + 84,
        "f3": 84 * 10 + 10,
        "activation": 0,
    }
    assert count_parameters(model) == 61706


def test_exam_receptive_fields() -> None:
    fields = lenet_receptive_fields()
    assert fields["conv1"] == 5
    assert fields["pool1"] == 6
    assert fields["conv2"] == 14
    assert fields["pool2"] == 16
    assert fields["f1"] == 32


def test_receptive_field_generic_stack() -> None:
    layers = [
        WindowLayer("a", kernel=3),
        WindowLayer("b", kernel=3, stride=2, padding=1),
        WindowLayer("c", kernel=3, dilation=2),
    ]
    fields = receptive_fields(layers, input_size=20)
    assert [(f.size, f.jump, f.output_size) for f in fields] == [(3, 1, 18), (5, 2, 9), (13, 2, 5)]
    with pytest.raises(ValueError, match="no output"):
        receptive_fields([WindowLayer("big", kernel=9)], input_size=8)


def test_receptive_field_matches_gradient_support() -> None:
    # A linear stand-in for LeNet's feature extractor (average instead of max
    # pooling so every pixel in a window gets gradient): the input pixels with
    # non-zero gradient for one output unit are exactly its receptive field.
    stack = nn.Sequential(
        nn.Conv2d(1, 1, 5, bias=False),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(1, 1, 5, bias=False),
        nn.AvgPool2d(2, 2),
    )
    for layer in stack:
        if isinstance(layer, nn.Conv2d):
            nn.init.ones_(layer.weight)
    x = torch.zeros(1, 1, 32, 32, requires_grad=True)
    stack(x)[0, 0, 2, 2].backward()
    rows, columns = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert (int(rows.max() - rows.min()) + 1, int(columns.max() - columns.min()) + 1) == (16, 16)
    assert lenet_receptive_fields()["pool2"] == 16


def test_even_odd_variant_adds_eleven_parameters() -> None:
    backbone = LeNet5()
    even_odd = EvenOddLeNet5(backbone)
    assert even_odd.backbone is backbone
    assert count_parameters(even_odd) - count_parameters(backbone) == 11
    assert count_parameters(nn.Linear(84, 1)) == 85  # replacing f3 instead
    assert count_parameters(nn.Linear(10, 2)) == 22  # a two-logit head instead
    logits = even_odd(torch.randn(4, 1, 32, 32))
    assert logits.shape == (4,)


@pytest.mark.parametrize(
    ("model_class", "extra_shapes", "extra_parameters"),
    [
        (AdaptivePoolLeNet5, {"pool2": (2, 16, 14, 14), "adaptive_pool": (2, 16, 5, 5)}, 0),
        (
            ExtraStageLeNet5,
            {"pool2": (2, 16, 14, 14), "conv3": (2, 16, 10, 10), "pool3": (2, 16, 5, 5)},
            6416,
        ),
    ],
)
def test_68_pixel_variants(model_class: type[LeNet5], extra_shapes: dict, extra_parameters: int) -> None:
    model = model_class()
    x = torch.randn(2, 1, 68, 68)
    shapes = layer_output_shapes(model, x)
    assert shapes["conv1"] == (2, 6, 64, 64)
    for name, shape in extra_shapes.items():
        assert shapes[name] == shape
    assert shapes["f3"] == (2, 10)
    assert model(x).shape == (2, 10)
    assert count_parameters(model) - count_parameters(LeNet5()) == extra_parameters


def test_classic_lenet_rejects_68_pixels() -> None:
    with pytest.raises(RuntimeError):
        LeNet5()(torch.zeros(1, 1, 68, 68))


def test_extra_stage_f1_sees_whole_68_input() -> None:
    fields = lenet_receptive_fields(ExtraStageLeNet5(), input_size=68)
    assert fields["conv3"] == 32
    assert fields["pool3"] == 36
    assert fields["f1"] == 68


def _w0_gradient(model: ResidualLeNet5, x: torch.Tensor, target: torch.Tensor, path: str) -> torch.Tensor:
    """Gradient of the loss at conv1.weight through the chosen path(s)."""
    h0 = model.stem(x)
    if path == "both":
        h1 = h0 + model.branch(h0)
    elif path == "identity":
        h1 = h0 + model.branch(h0.detach())
    elif path == "branch":
        h1 = h0.detach() + model.branch(h0)
    else:  # the same network without its skip connection
        h1 = model.branch(h0)
    loss = nn.functional.cross_entropy(model.head(h1), target)
    (gradient,) = torch.autograd.grad(loss, model.conv1.weight)
    return gradient


def test_residual_gradient_keeps_identity_term() -> None:
    torch.manual_seed(0)
    model = ResidualLeNet5()
    x = torch.randn(4, 1, 32, 32)
    target = torch.tensor([1, 3, 5, 7])

    full = _w0_gradient(model, x, target, "both")
    identity = _w0_gradient(model, x, target, "identity")
    branch = _w0_gradient(model, x, target, "branch")
    torch.testing.assert_close(full, identity + branch, rtol=1e-5, atol=1e-7)
    assert branch.abs().sum() > 0

    # Kill the branch's gradient: its last convolution outputs zeros.
    with torch.no_grad():
        model.branch[2].weight.zero_()
        model.branch[2].bias.zero_()
    full = _w0_gradient(model, x, target, "both")
    identity = _w0_gradient(model, x, target, "identity")
    assert torch.count_nonzero(_w0_gradient(model, x, target, "branch")) == 0
    assert torch.equal(full, identity)
    assert full.norm() > 1e-4
    # Without the skip connection the same network sends nothing back to w0.
    assert torch.count_nonzero(_w0_gradient(model, x, target, "plain")) == 0


def test_residual_forward_shape() -> None:
    assert ResidualLeNet5()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_exam_prediction_table() -> None:
    table = assess_predictions(EXAM_PROBABILITIES, EXAM_TRUE_CLASS)
    assert [(name, row.predicted_class, row.correct) for name, row in table.items()] == [
        ("A", 0, False),
        ("B", 0, False),
        ("C", 8, True),
    ]
    assert table["A"].cross_entropy == pytest.approx(-math.log(0.40))
    assert table["B"].cross_entropy == pytest.approx(-math.log(0.41))
    assert table["C"].cross_entropy == pytest.approx(-math.log(0.35))
    # The only correct model has the highest loss.
    assert max(table.values(), key=lambda row: row.cross_entropy) is table["C"]
    # Agrees with torch's cross-entropy on log-probabilities.
    probabilities = torch.tensor(list(EXAM_PROBABILITIES.values()), dtype=torch.float64)
    losses = nn.functional.nll_loss(
        torch.log(probabilities.clamp_min(1e-300)), torch.full((3,), EXAM_TRUE_CLASS), reduction="none"
    )
    assert losses.tolist() == pytest.approx([row.cross_entropy for row in table.values()])


def test_assess_predictions_validates() -> None:
    with pytest.raises(ValueError, match="not a distribution"):
        assess_predictions({"bad": [0.5, 0.6]}, 0)
    with pytest.raises(ValueError, match="out of range"):
        assess_predictions({"short": [0.5, 0.5]}, 2)
    assert assess_predictions({"zero": [1.0, 0.0]}, 1)["zero"].cross_entropy == math.inf
