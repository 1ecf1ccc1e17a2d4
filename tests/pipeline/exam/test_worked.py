"""Tests for the worked examples: exact exam answers, referee, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.exam.worked import (
    ExamCheckError,
    agree,
    attention_permutation_statement,
    average_pooling_statement,
    build_report,
    check_linear_collapse,
    collapse_linear_layers,
    conv_shape_statement,
    convolution_matrix,
    elu_plot_png,
    gradient_sign_statement,
    input_gradient_full_convolution,
    optimizer_state_statement,
    optimizer_state_tensors,
    pool_configurations,
    problem1_statements,
    solve_problem3,
    solve_problem5,
    tanh_gradient_statement,
    write_elu_plot,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_agree_refuses_disagreement() -> None:
    assert agree("same", [1.0, 2.0], torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]
    with pytest.raises(ExamCheckError, match="wrong"):
        agree("wrong", [1.0, 2.0], torch.tensor([1.0, 2.5]))
    with pytest.raises(ExamCheckError, match="shape"):
        agree("shape", [1.0, 2.0], [[1.0, 2.0]])


def test_problem3_answers() -> None:
    answers = solve_problem3()
    assert answers.sizes_for_7 == {"input": 7, "conv": 5, "pool": 4, "output": 1}
    assert answers.pool_configurations == [(2, 1)]
    assert answers.z.tolist() == [6.0, 4.0, 3.0]
    assert answers.m.tolist() == [6.0, 4.0]
    assert answers.y == 6.0
    assert answers.loss == 16.0
    assert answers.conv_matrix.tolist() == [
        [0.5, 1.5, 0.5, 0.0, 0.0],
        [0.0, 0.5, 1.5, 0.5, 0.0],
        [0.0, 0.0, 0.5, 1.5, 0.5],
    ]
    assert answers.dloss_dy == 8.0
    assert answers.dloss_dm.tolist() == [-2.0, 6.0]
    assert answers.dloss_dz.tolist() == [2.0, 1.0, 0.0]
    assert answers.dloss_dc2 == 11.0


def test_problem3_matrix_matches_torch_conv() -> None:
    weights = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64)
    x = torch.randn(9, dtype=torch.float64)
    expected = nn.functional.conv1d(x.view(1, 1, -1), weights.view(1, 1, -1)).flatten()
    np.testing.assert_allclose(convolution_matrix(weights.tolist(), 9) @ x.numpy(), expected.numpy())
    assert pool_configurations(5, 4) == [(2, 1)]
    assert (3, 2) in pool_configurations(7, 3)


def test_problem5_answers() -> None:
    answers = solve_problem5()
    assert answers.output.tolist() == [[13.0, -5.0], [-2.0, 6.0]]
    assert answers.meaning.startswith("sharpening")
    assert answers.flat_region_output == 7.0
    assert answers.input_gradient.tolist() == [
        [0.0, -3.0, 1.0, 0.0],
        [-3.0, 15.0, -10.0, 1.0],
        [-1.0, 0.0, 10.0, -2.0],
        [0.0, -1.0, -2.0, 0.0],
    ]


def test_full_convolution_flips_an_asymmetric_kernel() -> None:
    # The exam kernel is symmetric, so only an asymmetric one shows the flip.
    generator = torch.Generator().manual_seed(0)
    kernel = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    upstream = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    image = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    output = nn.functional.conv2d(image, kernel.view(1, 1, 3, 3))
    (expected,) = torch.autograd.grad(output, image, grad_outputs=upstream.view(1, 1, 3, 4))
    ours = input_gradient_full_convolution(upstream.numpy(), kernel.numpy())
    np.testing.assert_allclose(ours, expected.view(5, 6).numpy(), atol=1e-12)
    unflipped = input_gradient_full_convolution(upstream.numpy(), kernel.numpy()[::-1, ::-1])
    assert not np.allclose(unflipped, expected.view(5, 6).numpy())


def test_linear_collapse() -> None:
    torch.manual_seed(3)
    first = nn.Linear(4, 6).double()
    second = nn.Linear(6, 2, bias=False).double()
    combined = collapse_linear_layers(first, second)
    x = torch.randn(10, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(combined(x), second(first(x)))
        torch.testing.assert_close(combined.weight, second.weight @ first.weight)
        torch.testing.assert_close(combined.bias, second.weight @ first.bias)
    assert check_linear_collapse() < 1e-12


def test_optimizer_state_counts() -> None:
    assert optimizer_state_tensors(torch.optim.RMSprop, lr=0.01) == 1
    assert optimizer_state_tensors(torch.optim.Adam, lr=0.01) == 2
    # The counter does see extra buffers when an optimizer keeps them.
    assert optimizer_state_tensors(torch.optim.RMSprop, lr=0.01, momentum=0.9) == 2
    assert optimizer_state_tensors(torch.optim.SGD, lr=0.01) == 0


@pytest.mark.parametrize(
    "statement",
    [
        average_pooling_statement,
        optimizer_state_statement,
        attention_permutation_statement,
        conv_shape_statement,
        tanh_gradient_statement,
        gradient_sign_statement,
    ],
)
def test_problem1_statement_holds(statement) -> None:
    result = statement()
    assert result.holds, result.evidence


def test_problem1_evidence() -> None:
    statements = problem1_statements()
    assert len(statements) == 6
    assert "(2, 7, 8, 8) -> (2, 7, 4, 4)" in statements[0].evidence
    assert "RMSProp 1, Adam 2" in statements[1].evidence
    assert "C=16 -> (4, 8, 8)" in statements[3].evidence
    assert "1.000000" in statements[4].evidence  # the bound is reached at x = 0


def test_report_contains_every_answer() -> None:
    report = build_report()
    for expected in (
        "z = [6, 4, 3], m = [6, 4], y = 6, L = 16",
        "dL/dy = 2(y − y*) = 8",
        "dL/dm for dL/dy = 2: [-2, 6]",
        "dL/dz for dL/dm = [2, 1] (routed to each window's maximum): [2, 1, 0]",
        "= 11.",
        "conv (k=3, no padding) 5, max-pool (k=2, s=1) 4, output 1",
        "| A | 0 | no | 0.4 | 0.9163 |",
        "| C | 8 | yes | 0.35 | 1.0498 |",
        "f1 32×32",
        "adds 11",
        "    13     -5",
        "    -3     15    -10      1",
        "sharpening",
    ):
        assert expected in report
    assert "✘" not in report
    assert "7.2" not in report


def test_elu_plot(tmp_path) -> None:
    assert elu_plot_png((1.0,)).startswith(PNG_SIGNATURE)
    path = write_elu_plot(tmp_path / "plots" / "elu.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in path.parent.iterdir()) == ["elu.png"]
