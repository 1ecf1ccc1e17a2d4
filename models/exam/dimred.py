"""Dimensionality reduction: PCA (no learning) versus an autoencoder (learned).

Both map a sample to a code of ``code_size`` numbers and back; comparing their
reconstruction error at equal code size shows what the non-linear, trained
encoder buys over the best linear projection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.exam.activations import make_activation


class PCA:
    """Principal component analysis via the SVD of the centred data.

    Args:
        code_size: Number of principal components kept.
    """

    def __init__(self, code_size: int) -> None:
        if code_size < 1:
            raise ValueError(f"code_size must be >= 1, got {code_size}")
        self.code_size = code_size
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.explained_variance: np.ndarray | None = None

    def fit(self, data: np.ndarray) -> PCA:
        """Finds the mean and the top principal directions.

        Args:
            data: Samples, shape (N, D) with ``code_size <= min(N, D)``.

        Returns:
            ``self``.

        Raises:
            ValueError: If the code is larger than the data allows.
        """
        samples = np.asarray(data, dtype=np.float64)
        if self.code_size > min(samples.shape):
            raise ValueError(f"code_size {self.code_size} exceeds min(N, D) = {min(samples.shape)}")
        self.mean = samples.mean(axis=0)
        _, singular_values, right_vectors = np.linalg.svd(samples - self.mean, full_matrices=False)
        self.components = right_vectors[: self.code_size]  # (code, D), orthonormal rows
        self.explained_variance = singular_values[: self.code_size] ** 2 / max(len(samples) - 1, 1)
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.components is None:
            raise RuntimeError("PCA is not fitted; call fit() first")
        return self.mean, self.components

    def encode(self, data: np.ndarray) -> np.ndarray:
        """Projects samples (N, D) onto the components, giving (N, code_size)."""
        mean, components = self._fitted()
        return (np.asarray(data, dtype=np.float64) - mean) @ components.T

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Maps codes (N, code_size) back to the data space (N, D)."""
        mean, components = self._fitted()
        return codes @ components + mean

    def reconstruct(self, data: np.ndarray) -> np.ndarray:
        """Encodes and decodes samples."""
        return self.decode(self.encode(data))


class Autoencoder(nn.Module):
    """Fully connected autoencoder ``D -> hidden -> code -> hidden -> D``.

    Args:
        input_size: Data dimension D.
        code_size: Bottleneck size.
        hidden_size: Width of the hidden layers.
        activation: Activation name for :func:`models.exam.activations.make_activation`.
    """

    def __init__(
        self, input_size: int, code_size: int, hidden_size: int = 128, activation: str = "elu"
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(input_size, hidden_size), make_activation(activation), nn.Linear(hidden_size, code_size)
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_size, hidden_size), make_activation(activation), nn.Linear(hidden_size, input_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily sets torch's intra-op thread count (``None``: leave it).

    Small models spend their time in per-operation overhead, and splitting
    such tiny operations across threads on a busy machine is much slower than
    running them on one.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_autoencoder(
    data: np.ndarray,
    code_size: int,
    epochs: int = 100,
    batch_size: int = 128,
    learning_rate: float = 5e-3,
    seed: int = 0,
    num_threads: int | None = 1,
) -> Autoencoder:
    """Trains an autoencoder on ``data`` by minimising the reconstruction MSE.

    Args:
        data: Training samples, shape (N, D).
        code_size: Bottleneck size.
        epochs: Passes over the data.
        batch_size: Mini-batch size.
        learning_rate: Adam's initial step size (decayed to 0 by a cosine schedule).
        seed: Seed for initialisation and shuffling.
        num_threads: Torch threads while training (see :func:`torch_threads`).

    Returns:
        The trained model in eval mode.
    """
    with torch_threads(num_threads):
        return _train_autoencoder(data, code_size, epochs, batch_size, learning_rate, seed)


def _train_autoencoder(
    data: np.ndarray, code_size: int, epochs: int, batch_size: int, learning_rate: float, seed: int
) -> Autoencoder:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    samples = torch.as_tensor(np.asarray(data), dtype=torch.float32)
    model = Autoencoder(samples.shape[1], code_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(samples) // batch_size)  # ceil division
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(samples), generator=generator)
        for start in range(0, len(samples), batch_size):
            batch = samples[order[start : start + batch_size]]
            loss = nn.functional.mse_loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def autoencoder_reconstruct(model: Autoencoder, data: np.ndarray) -> np.ndarray:
    """Reconstructs samples (N, D) with a trained autoencoder."""
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(data), dtype=torch.float32)).double().numpy()


def mean_squared_error(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean over samples and features of the squared reconstruction error."""
    return float(np.mean((np.asarray(original, dtype=np.float64) - reconstruction) ** 2))


def load_digits_vectors(seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Loads scikit-learn's 8x8 digits as 64-dim vectors in [0, 1].

    Args:
        seed: Seed of the train/test split.
        test_fraction: Share of samples held out.

    Returns:
        ``(train, test)`` arrays of shape (N, 64).
    """
    from sklearn.datasets import load_digits

    images = load_digits().data / 16.0  # (1797, 64), pixel values 0..16
    order = np.random.default_rng(seed).permutation(len(images))
    test_count = round(test_fraction * len(images))
    return images[order[test_count:]], images[order[:test_count]]


@dataclass(frozen=True)
class DimRedRow:
    """Held-out reconstruction error of both methods at one code size.

    Attributes:
        code_size: Numbers per code.
        pca_mse: PCA's mean squared error.
        autoencoder_mse: The autoencoder's mean squared error.
    """

    code_size: int
    pca_mse: float
    autoencoder_mse: float


def compare_dimensionality_reduction(
    code_sizes: Sequence[int] = (2, 8, 16),
    seed: int = 0,
    epochs: int = 100,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[DimRedRow]:
    """Fits PCA and trains an autoencoder per code size; reports test MSE.

    Args:
        code_sizes: Code sizes to compare.
        seed: Seed for the split and the training.
        epochs: Autoencoder training epochs.
        data: ``(train, test)`` arrays; scikit-learn's digits if omitted.

    Returns:
        One row per code size, in the given order.
    """
    train, test = data if data is not None else load_digits_vectors(seed)
    rows = []
    for code_size in code_sizes:
        pca = PCA(code_size).fit(train)
        autoencoder = train_autoencoder(train, code_size, epochs=epochs, seed=seed)
        rows.append(
            DimRedRow(
                code_size,
                mean_squared_error(test, pca.reconstruct(test)),
                mean_squared_error(test, autoencoder_reconstruct(autoencoder, test)),
            )
        )
    return rows


def format_dimred_table(rows: Sequence[DimRedRow]) -> str:
    """Renders the comparison as a markdown table."""
    lines = ["| code size | PCA MSE | autoencoder MSE |", "|---:|---:|---:|"]
    lines += [f"| {row.code_size} | {row.pca_mse:.5f} | {row.autoencoder_mse:.5f} |" for row in rows]
    return "\n".join(lines)
