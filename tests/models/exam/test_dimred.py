"""Tests for PCA, the autoencoder and their comparison on the digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.exam.dimred import (
    PCA,
    Autoencoder,
    DimRedRow,
    compare_dimensionality_reduction,
    format_dimred_table,
    load_digits_vectors,
    mean_squared_error,
    torch_threads,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("sklearn")
    return load_digits_vectors(seed=0)


def test_digits_split(digits: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = digits
    assert train.shape == (1348, 64)
    assert test.shape == (449, 64)
    assert train.min() == 0.0 and train.max() == 1.0


def test_pca_matches_scikit_learn(digits: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.decomposition import PCA as ReferencePCA

    train, test = digits
    ours = PCA(8).fit(train)
    reference = ReferencePCA(8, svd_solver="full").fit(train)
    np.testing.assert_allclose(ours.explained_variance, reference.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(
        ours.reconstruct(test), reference.inverse_transform(reference.transform(test)), atol=1e-9
    )
    assert ours.encode(test).shape == (449, 8)


def test_pca_full_rank_reconstructs_exactly() -> None:
    data = np.random.default_rng(0).normal(size=(20, 5))
    np.testing.assert_allclose(PCA(5).fit(data).reconstruct(data), data, atol=1e-12)
    with pytest.raises(ValueError, match="exceeds"):
        PCA(6).fit(data)
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).encode(data)


def test_autoencoder_shapes() -> None:
    model = Autoencoder(64, 8)
    assert model.encoder(torch.zeros(3, 64)).shape == (3, 8)
    assert model(torch.zeros(3, 64)).shape == (3, 64)


def test_torch_threads_restores_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_comparison_table(digits: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = digits
    rows = compare_dimensionality_reduction((2, 8, 16), seed=0, epochs=12, data=digits)
    assert [row.code_size for row in rows] == [2, 8, 16]
    pca_errors = [row.pca_mse for row in rows]
    assert pca_errors[0] > pca_errors[1] > pca_errors[2] > 0
    # Predicting the training mean for every sample is the zero-code baseline.
    baseline = mean_squared_error(test, np.broadcast_to(train.mean(axis=0), test.shape))
    for row in rows:
        assert math.isfinite(row.autoencoder_mse)
        assert 0 < row.autoencoder_mse < baseline
        assert row.pca_mse < baseline
    table = format_dimred_table(rows)
    assert table.splitlines()[0] == "| code size | PCA MSE | autoencoder MSE |"
    assert f"| 2 | {rows[0].pca_mse:.5f} | {rows[0].autoencoder_mse:.5f} |" in table


def test_format_table() -> None:
    assert format_dimred_table([DimRedRow(4, 0.5, 0.25)]).splitlines()[-1] == "| 4 | 0.50000 | 0.25000 |"
