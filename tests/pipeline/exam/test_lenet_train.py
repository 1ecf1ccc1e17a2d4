"""Tests for LeNet-5 data loading, imbalance remedies, training, evaluation and export."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.exam.lenet import LeNet5
from pipeline.exam.lenet_train import (
    DigitData,
    TrainConfig,
    check_class_index,
    check_onnx,
    class_weights,
    confusion_matrix_png,
    evaluate,
    export_onnx,
    format_per_class,
    load_mnist,
    load_sklearn_digits,
    oversample_indices,
    random_shift,
    read_idx,
    resolve_device,
    run_lenet_training,
    train_lenet,
    write_idx,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> DigitData:
    pytest.importorskip("sklearn")
    return load_sklearn_digits(seed=0)


def write_fake_mnist(
    folder: Path, train_count: int = 40, test_count: int = 20, compress: bool = True
) -> None:
    """Writes four MNIST-layout IDX files of random 28x28 digits."""
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, count in (("train", train_count), ("t10k", test_count)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", (np.arange(count) % 10).astype(np.uint8))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_hand_built_file(tmp_path: Path, suffix: str) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + images.tobytes()
    path = tmp_path / f"images{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    parsed = read_idx(path)
    assert parsed.dtype == np.uint8
    assert parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, images)


def test_idx_round_trip_big_endian_types(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.25], [3.0, 1e6]], dtype=np.float32)
    path = write_idx(tmp_path / "floats.idx", values)
    assert path.read_bytes()[:4] == bytes([0, 0, 0x0D, 2])
    assert path.read_bytes()[12:16] == struct.pack(">f", 1.5)
    assert np.array_equal(read_idx(path), values)
    integers = np.array([-70000, 5, 2**31 - 1], dtype=np.int32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "ints.idx.gz", integers)), integers)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="header promises 5"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_pads_to_32(tmp_path: Path, compress: bool) -> None:
    write_fake_mnist(tmp_path, compress=compress)
    data = load_mnist(tmp_path)
    assert data.source == "mnist"
    assert data.train_images.shape == (40, 1, 32, 32)
    assert data.test_images.shape == (20, 1, 32, 32)
    assert data.train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    original = read_idx(next(tmp_path.glob("train-images*")))
    assert torch.equal(
        data.train_images[:, 0, 2:30, 2:30], torch.as_tensor(original, dtype=torch.float32) / 255
    )
    border = data.train_images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert torch.count_nonzero(border) == 0


def test_load_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist(tmp_path)


def test_sklearn_digits_split(digits: DigitData) -> None:
    assert digits.train_images.shape == (1438, 1, 32, 32)
    assert digits.test_images.shape == (359, 1, 32, 32)
    assert float(digits.train_images.min()) >= 0.0 and float(digits.train_images.max()) <= 1.0
    test_counts = torch.bincount(digits.test_labels, minlength=10)
    all_counts = test_counts + torch.bincount(digits.train_labels, minlength=10)
    assert test_counts.tolist() == [round(0.2 * int(count)) for count in all_counts]
    again = load_sklearn_digits(seed=0)
    assert torch.equal(again.test_images, digits.test_images)
    assert not torch.equal(load_sklearn_digits(seed=1).test_labels, digits.test_labels)


def test_oversample_indices() -> None:
    labels = torch.tensor([0, 7, 1, 7, 2])
    indices = oversample_indices(labels, 7, factor=3)
    assert torch.bincount(labels[indices]).tolist() == [1, 1, 1, 0, 0, 0, 0, 6]
    assert indices.tolist()[:5] == [0, 1, 2, 3, 4]
    assert torch.equal(oversample_indices(labels, 7, factor=1), torch.arange(5))
    with pytest.raises(ValueError, match="no training samples"):
        oversample_indices(labels, 9, factor=2)


def test_class_weights_in_cross_entropy() -> None:
    weights = class_weights(3, 4.0, num_classes=5)
    assert weights.tolist() == [1.0, 1.0, 1.0, 4.0, 1.0]
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([3, 0, 3, 1, 4, 2])
    per_sample = nn.functional.cross_entropy(logits, targets, reduction="none")
    sample_weights = weights[targets]
    expected = (sample_weights * per_sample).sum() / sample_weights.sum()
    torch.testing.assert_close(nn.functional.cross_entropy(logits, targets, weight=weights), expected)
    with pytest.raises(ValueError, match="not in 0..9"):
        class_weights(10, 2.0)
    with pytest.raises(ValueError, match="not in 0..4"):
        check_class_index(5, num_classes=5)
    with pytest.raises(ValueError, match="> 0"):
        class_weights(1, 0.0)


def test_random_shift_moves_content() -> None:
    images = torch.zeros(2, 1, 8, 8)
    images[:, :, 3, 4] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = random_shift(images, 2, generator)
    assert shifted.shape == images.shape
    row, column = torch.nonzero(shifted[0, 0], as_tuple=True)
    assert abs(int(row) - 3) <= 2 and abs(int(column) - 4) <= 2
    assert torch.equal(shifted[0], shifted[1])  # one offset per batch
    assert random_shift(images, 0, generator) is images


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")


class _FixedPredictions(nn.Module):
    """Returns one-hot logits for preset predictions, in order."""

    def __init__(self, predictions: list[int]) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.logits = nn.functional.one_hot(torch.tensor(predictions), 3).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(images)]


def test_evaluate_confusion_and_per_class() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    model = _FixedPredictions([0, 1, 1, 1, 2, 2])
    evaluation = evaluate(model, torch.zeros(6, 1, 4, 4), labels, num_classes=3)
    assert evaluation.confusion.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert evaluation.accuracy == pytest.approx(4 / 6)
    assert evaluation.per_class_accuracy == pytest.approx([0.5, 2 / 3, 1.0])
    assert confusion_matrix_png(evaluation.confusion).startswith(PNG_SIGNATURE)


def test_format_per_class() -> None:
    assert format_per_class([1.0, 0.5, None, float("nan")]) == "0: 100.0%  1: 50.0%  2: n/a  3: n/a"


def test_training_reduces_loss_and_respects_options(digits: DigitData) -> None:
    config = TrainConfig(epochs=2, limit=160, seed=0, oversample_class=7, class_weight_class=7, device="cpu")
    result = train_lenet(digits, config)
    assert len(result.epoch_losses) == 2
    assert result.epoch_losses[1] < result.epoch_losses[0]
    assert not result.model.training
    with pytest.raises(ValueError, match="not in 0..9"):
        train_lenet(digits, TrainConfig(epochs=1, limit=16, oversample_class=11, device="cpu"))


def test_onnx_export_parity(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = LeNet5().eval()
    path = export_onnx(model, tmp_path / "lenet5.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx"]
    images = torch.rand(5, 1, 32, 32)
    assert check_onnx(path, model, images) < 1e-4


def test_sklearn_digits_accuracy_bar(tmp_path: Path, digits: DigitData) -> None:
    """The default recipe reaches >= 97% on the seeded scikit-learn digits split."""
    report = run_lenet_training(TrainConfig(seed=0, device="cpu"), tmp_path)
    assert report.test_samples == 359
    assert report.epochs == 20
    assert report.accuracy >= 0.97, report.per_class_accuracy
    assert report.onnx_max_abs_difference < 1e-4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == report.accuracy
    assert metrics["source"] == "sklearn-digits"
    assert np.array(metrics["confusion_matrix"]).sum() == 359
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_matrix.png",
        "lenet5.onnx",
        "metrics.json",
    ]
