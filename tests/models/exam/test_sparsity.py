"""Tests for the L1 penalty, magnitude pruning, masks and CSR storage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.exam.sparsity import (
    CsrWeight,
    apply_masks,
    csr_bytes,
    dense_bytes,
    from_csr,
    hold_masks,
    l1_penalty,
    prune_magnitude,
    sparsity_of,
    storage_report,
    to_csr,
)


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 5))


def test_l1_penalty_value_and_gradient() -> None:
    model = _model()
    conv, first, second = model[0], model[2], model[4]
    expected = 0.3 * (conv.weight.abs().sum() + first.weight.abs().sum() + second.weight.abs().sum())
    penalty = l1_penalty(model, strength=0.3)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    torch.testing.assert_close(first.weight.grad, 0.3 * first.weight.sign())
    assert first.bias.grad is None  # biases are not penalised
    linear_only = l1_penalty(model, include_conv=False)
    torch.testing.assert_close(linear_only, first.weight.abs().sum() + second.weight.abs().sum())
    with pytest.raises(ValueError, match="no Linear or Conv"):
        l1_penalty(nn.ReLU())


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_global_pruning_reaches_exact_sparsity(sparsity: float) -> None:
    model = _model()
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks = prune_magnitude(model, sparsity, scope="global")
    assert set(masks) == {"2.weight", "4.weight"}
    total = 8 * 20 + 20 * 5
    pruned = sum(int((~mask).sum()) for mask in masks.values())
    assert pruned == round(sparsity * total)
    assert sparsity_of(model) == pytest.approx(pruned / total)
    if 0 < pruned < total:
        kept = torch.cat([originals[name][mask].abs() for name, mask in masks.items()])
        removed = torch.cat([originals[name][~mask].abs() for name, mask in masks.items()])
        assert kept.min() >= removed.max()
    # Conv weights and biases are untouched.
    assert torch.equal(model[0].weight, originals["0.weight"])
    assert torch.equal(model[2].bias, originals["2.bias"])


def test_layer_pruning_is_exact_per_layer_and_differs_from_global() -> None:
    model = _model()
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # one layer of tiny weights
    layer_model = _model()
    layer_model.load_state_dict(model.state_dict())

    layer_masks = prune_magnitude(layer_model, 0.5, scope="layer")
    assert int((~layer_masks["2.weight"]).sum()) == 80
    assert int((~layer_masks["4.weight"]).sum()) == 50

    global_masks = prune_magnitude(model, 0.5, scope="global")
    # Globally all 130 removals fall on the tiny layer.
    assert int((~global_masks["2.weight"]).sum()) == 130
    assert int((~global_masks["4.weight"]).sum()) == 0


def test_pruning_with_ties_is_still_exact() -> None:
    model = nn.Linear(10, 10, bias=False)
    nn.init.ones_(model.weight)
    masks = prune_magnitude(model, 0.25)
    assert int((model.weight == 0).sum()) == 25
    assert int((~masks["weight"]).sum()) == 25


def test_pruning_includes_conv_on_request() -> None:
    masks = prune_magnitude(_model(), 0.5, include_conv=True)
    assert set(masks) == {"0.weight", "2.weight", "4.weight"}
    assert sum(int((~mask).sum()) for mask in masks.values()) == round(0.5 * (18 + 160 + 100))


@pytest.mark.parametrize(("sparsity", "scope"), [(1.5, "global"), (0.5, "row")])
def test_pruning_rejects_bad_arguments(sparsity: float, scope: str) -> None:
    with pytest.raises(ValueError):
        prune_magnitude(_model(), sparsity, scope=scope)


def _adam_with_state(model: nn.Module) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.01)
    model(torch.randn(4, 1, 4, 4)).square().mean().backward()
    optimizer.step()  # builds moment estimates for every weight
    return optimizer


def _fine_tune_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 1, 4, 4)).square().mean().backward()
    optimizer.step()


def test_masks_hold_after_optimizer_steps() -> None:
    model = _model()
    optimizer = _adam_with_state(model)
    masks = prune_magnitude(model, 0.8)
    handle = hold_masks(optimizer, model, masks)
    for _ in range(3):
        _fine_tune_step(model, optimizer)
    for name, parameter in model.named_parameters():
        if name in masks:
            assert torch.count_nonzero(parameter[~masks[name]]) == 0
            assert torch.count_nonzero(parameter[masks[name]]) == int(masks[name].sum())
    assert sparsity_of(model) == pytest.approx(0.8)

    # Without enforcement Adam's momentum revives the pruned weights.
    handle.remove()
    _fine_tune_step(model, optimizer)
    assert torch.count_nonzero(model[2].weight[~masks["2.weight"]]) > 0
    apply_masks(model, masks)
    assert torch.count_nonzero(model[2].weight[~masks["2.weight"]]) == 0


def test_csr_round_trip_is_exact_and_matches_scipy() -> None:
    scipy_sparse = pytest.importorskip("scipy.sparse")
    torch.manual_seed(1)
    weight = torch.randn(6, 9)
    weight[weight.abs() < 0.8] = 0
    weight[2] = 0  # an empty row
    weight[:, -2:] = 0  # trailing empty columns
    csr = to_csr(weight)
    assert torch.equal(from_csr(csr, (6, 9)), weight)
    reference = scipy_sparse.csr_matrix(weight.numpy())
    assert csr.data.tolist() == reference.data.tolist()
    assert csr.indices.tolist() == reference.indices.tolist()
    assert csr.indptr.tolist() == reference.indptr.tolist()
    assert csr.indices.dtype == torch.int32
    with pytest.raises(ValueError, match="2-D"):
        to_csr(torch.zeros(2, 2, 2))


def test_byte_counts() -> None:
    weight = torch.zeros(4, 5)
    weight[0, 1] = 1.5
    weight[3, 4] = -2.0
    weight[3, 0] = 0.25
    csr = to_csr(weight)
    assert csr == CsrWeight(csr.data, csr.indices, csr.indptr)
    assert csr.indptr.tolist() == [0, 1, 1, 1, 3]
    assert dense_bytes(weight) == 4 * 20
    assert csr_bytes(csr) == 3 * 4 + 3 * 4 + 5 * 4
    assert csr_bytes(to_csr(weight, index_dtype=torch.int64)) == 3 * 4 + 3 * 8 + 5 * 8


def test_storage_report_after_pruning() -> None:
    model = _model()
    prune_magnitude(model, 0.9, scope="layer", include_conv=True)
    rows = {row.name: row for row in storage_report(model, include_conv=True)}
    assert rows["2.weight"].shape == (20, 8)
    assert rows["2.weight"].nonzeros == 16
    assert rows["2.weight"].dense_bytes == 640
    assert rows["2.weight"].csr_bytes == 16 * 8 + 21 * 4
    assert rows["0.weight"].nonzeros == 18 - round(0.9 * 18)
    assert rows["0.weight"].csr_bytes == rows["0.weight"].nonzeros * 8 + 3 * 4
