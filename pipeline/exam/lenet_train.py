"""Training, evaluation and ONNX export of LeNet-5 on handwritten digits.

Two data sources:

* scikit-learn's bundled digits (1797 images of 8x8, no download), upsampled
  to 32x32 and split 80/20, stratified and seeded;
* MNIST from IDX files the user already has (``train-images-idx3-ubyte`` and
  friends, gzip-compressed or not), padded from 28x28 to 32x32.

Images are scaled to [0, 1]; the exported ONNX model takes ``(B, 1, 32, 32)``
float32 images in that range and returns 10 logits.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.exam.lenet import LENET_INPUT_SIZE, NUM_DIGIT_CLASSES, LeNet5
from pipeline.files import atomic_write_bytes, atomic_write_text, figure_png

SKLEARN_DIGITS_SOURCE = "sklearn-digits"
MNIST_SOURCE = "mnist"
# MNIST has 42x more training images than the digits, so far fewer passes suffice.
DEFAULT_EPOCHS = {SKLEARN_DIGITS_SOURCE: 20, MNIST_SOURCE: 8}

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class DigitData:
    """Images and labels of one train/test split.

    Attributes:
        train_images: Float images in [0, 1], shape (N, 1, 32, 32).
        train_labels: Class indices, shape (N,).
        test_images: Float images in [0, 1], shape (M, 1, 32, 32).
        test_labels: Class indices, shape (M,).
        source: ``"sklearn-digits"`` or ``"mnist"``.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


def load_sklearn_digits(seed: int = 0, test_fraction: float = 0.2) -> DigitData:
    """Loads scikit-learn's 8x8 digits as 32x32 images, stratified and seeded.

    Args:
        seed: Seed of the train/test split.
        test_fraction: Share of each class held out for testing.

    Returns:
        The split, with 1797 images in total.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    images = nn.functional.interpolate(images, size=(LENET_INPUT_SIZE, LENET_INPUT_SIZE), mode="bilinear")
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_DIGIT_CLASSES):
        members = np.flatnonzero(digits.target == digit)
        test_mask[rng.choice(members, size=round(test_fraction * len(members)), replace=False)] = True
    test = torch.as_tensor(test_mask)
    return DigitData(images[~test], labels[~test], images[test], labels[test], SKLEARN_DIGITS_SOURCE)


def read_idx(path: Path | str) -> np.ndarray:
    """Parses an IDX file (the MNIST format), gzip-compressed or not.

    The header is two zero bytes, a type code, the number of dimensions, and
    one big-endian uint32 per dimension; the data follows in C order.

    Args:
        path: File to read; compression is detected from its first bytes.

    Returns:
        The array with the file's shape and dtype (native byte order).

    Raises:
        ValueError: If the header or the size is inconsistent.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    dimensions = raw[3]
    header_size = 4 + 4 * dimensions
    if len(raw) < header_size:
        raise ValueError(f"{path} has a truncated IDX header")
    shape = struct.unpack(f">{dimensions}I", raw[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(f"{path} holds {len(raw) - header_size} data bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx_file(directory: Path, split: str, kind: str) -> Path:
    rank = 3 if kind == "images" else 1
    for separator in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / f"{split}-{kind}{separator}idx{rank}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no {split}-{kind}-idx{rank}-ubyte[.gz] in {directory}")


def load_mnist(directory: Path | str) -> DigitData:
    """Loads MNIST from the four IDX files in ``directory``, padded to 32x32.

    Args:
        directory: Folder with ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte`` (optionally ``.gz``, ``.`` instead of
            ``-`` before ``idx`` also accepted).

    Returns:
        The official train/test split.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is malformed or images and labels disagree.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST directory {folder} does not exist")
    arrays = {}
    for split in ("train", "t10k"):
        images = read_idx(_find_idx_file(folder, split, "images"))
        labels = read_idx(_find_idx_file(folder, split, "labels"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{split} images {images.shape} and labels {labels.shape} do not match")
        if labels.max() >= NUM_DIGIT_CLASSES:
            raise ValueError(f"{split} labels exceed {NUM_DIGIT_CLASSES - 1}")
        tensor = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0  # (N, 1, H, W)
        pad_rows = LENET_INPUT_SIZE - tensor.shape[2]
        pad_columns = LENET_INPUT_SIZE - tensor.shape[3]
        if pad_rows < 0 or pad_columns < 0:
            raise ValueError(f"{split} images are larger than {LENET_INPUT_SIZE}x{LENET_INPUT_SIZE}")
        # Centre the digit like LeNet's original 32x32 input (2 pixels each side for 28x28).
        padding = (pad_columns // 2, pad_columns - pad_columns // 2, pad_rows // 2, pad_rows - pad_rows // 2)
        arrays[split] = (nn.functional.pad(tensor, padding), torch.as_tensor(labels, dtype=torch.int64))
    return DigitData(*arrays["train"], *arrays["t10k"], MNIST_SOURCE)


def oversample_indices(labels: torch.Tensor, class_index: int, factor: int) -> torch.Tensor:
    """Training indices in which every sample of one class appears ``factor`` times.

    Args:
        labels: Training labels, shape (N,).
        class_index: The under-performing class.
        factor: Total appearances per sample of that class (1 = no change).

    Returns:
        Indices into the training set, shape (N + (factor - 1) * n_class,).

    Raises:
        ValueError: If ``factor`` < 1 or the class has no samples.
    """
    if factor < 1:
        raise ValueError(f"oversampling factor must be >= 1, got {factor}")
    members = torch.nonzero(labels == class_index).flatten()
    if len(members) == 0:
        raise ValueError(f"class {class_index} has no training samples")
    return torch.cat([torch.arange(len(labels)), members.repeat(factor - 1)])


def check_class_index(class_index: int, num_classes: int = NUM_DIGIT_CLASSES) -> int:
    """Returns ``class_index`` if it names a class.

    Raises:
        ValueError: If it is outside ``0..num_classes - 1``.
    """
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class {class_index} is not in 0..{num_classes - 1}")
    return class_index


def class_weights(class_index: int, weight: float, num_classes: int = NUM_DIGIT_CLASSES) -> torch.Tensor:
    """Cross-entropy class weights: ``weight`` for one class, 1 for the rest.

    Args:
        class_index: The under-performing class.
        weight: Its weight in the loss.
        num_classes: Number of classes.

    Returns:
        Weight vector, shape (num_classes,).

    Raises:
        ValueError: If the class index is out of range or the weight not positive.
    """
    check_class_index(class_index, num_classes)
    if weight <= 0:
        raise ValueError(f"class weight must be > 0, got {weight}")
    weights = torch.ones(num_classes)
    weights[class_index] = weight
    return weights


def resolve_device(name: str) -> torch.device:
    """Turns ``auto``/``cpu``/``cuda`` into a device.

    Raises:
        ValueError: For an unknown name or CUDA requested but unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was requested but is not available")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")


@dataclass
class TrainConfig:
    """LeNet-5 training settings.

    Attributes:
        epochs: Passes over the training set; ``None`` picks the data
            source's default from ``DEFAULT_EPOCHS``.
        batch_size: Mini-batch size.
        learning_rate: Adam's initial step size (cosine-decayed to 0).
        seed: Seed for initialisation and shuffling.
        device: ``auto``, ``cpu`` or ``cuda``.
        limit: Use only the first ``limit`` training samples (smoke tests).
        oversample_class: Class whose samples are repeated, if any.
        oversample_factor: Appearances per sample of that class.
        class_weight_class: Class up-weighted in the loss, if any.
        class_weight: Its loss weight.
        num_threads: Torch CPU threads while training (``None``: leave as is).
            One is the default: LeNet-5's operations are so small that
            splitting them costs more than it saves, badly so on a busy CPU.
        max_shift: Random translation, in pixels, applied to each training
            batch (0 disables augmentation).
    """

    epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    device: str = "auto"
    limit: int | None = None
    oversample_class: int | None = None
    oversample_factor: int = 2
    class_weight_class: int | None = None
    class_weight: float = 2.0
    num_threads: int | None = 1
    max_shift: int = 2


@dataclass
class Evaluation:
    """Test-set results.

    Attributes:
        accuracy: Fraction of correct predictions.
        per_class_accuracy: Recall of each class (NaN without test samples).
        confusion: ``confusion[true, predicted]`` counts, shape (C, C).
    """

    accuracy: float
    per_class_accuracy: list[float]
    confusion: np.ndarray


@dataclass
class TrainResult:
    """A trained model and its learning curve.

    Attributes:
        model: The trained LeNet-5 (eval mode, on the training device).
        epoch_losses: Mean training loss per epoch.
        device: Device used.
    """

    model: LeNet5
    epoch_losses: list[float] = field(default_factory=list)
    device: str = "cpu"


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translates the whole batch by one random offset of up to ``max_shift`` pixels.

    Digits are written anywhere in a box, so small shifts are label-preserving
    and keep a small training set from being memorised pixel by pixel.

    Args:
        images: Batch, shape (B, C, H, W).
        max_shift: Largest shift along each axis.
        generator: Random source (CPU).

    Returns:
        Shifted batch, zero-filled at the uncovered border, same shape.
    """
    if max_shift <= 0:
        return images
    height, width = images.shape[-2:]
    padded = nn.functional.pad(images, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    row, column = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., row : row + height, column : column + width]


def train_lenet(data: DigitData, config: TrainConfig, progress: bool = False) -> TrainResult:
    """Trains LeNet-5 with Adam and cross-entropy.

    Args:
        data: The split to train on (only its training part is used).
        config: Settings, including the class-imbalance remedies.
        progress: Show a rich progress bar.

    Returns:
        The trained model and per-epoch losses.

    Raises:
        ValueError: For invalid class indices, factors or device names.
    """
    device = resolve_device(config.device)
    epochs = config.epochs if config.epochs is not None else DEFAULT_EPOCHS[data.source]
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    images, labels = data.train_images, data.train_labels
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    indices = torch.arange(len(labels))
    if config.oversample_class is not None:
        check_class_index(config.oversample_class)
        indices = oversample_indices(labels, config.oversample_class, config.oversample_factor)
    loss_weights = None
    if config.class_weight_class is not None:
        loss_weights = class_weights(config.class_weight_class, config.class_weight).to(device)

    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        model = LeNet5().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        steps_per_epoch = -(-len(indices) // config.batch_size)  # ceil division
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        images, labels = images.to(device), labels.to(device)
        result = TrainResult(model, device=str(device))
        with _progress_bar(progress, epochs * steps_per_epoch) as advance:
            for epoch in range(epochs):
                model.train()
                order = indices[torch.randperm(len(indices), generator=generator)].to(device)
                total_loss = 0.0
                for start in range(0, len(order), config.batch_size):
                    batch = order[start : start + config.batch_size]
                    inputs = random_shift(images[batch], config.max_shift, generator)
                    loss = nn.functional.cross_entropy(model(inputs), labels[batch], weight=loss_weights)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total_loss += loss.item() * len(batch)
                    advance(epoch)
                result.epoch_losses.append(total_loss / len(order))
        model.eval()
        return result
    finally:
        torch.set_num_threads(previous_threads)


@contextmanager
def _progress_bar(enabled: bool, total_steps: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(epoch)`` for a rich progress bar over all steps, or a no-op."""
    if not enabled:
        yield lambda _epoch: None
        return
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("LeNet-5 epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    # Progress goes to stderr, and only to a terminal, so stdout stays the report.
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("train", total=total_steps, epoch=1)
        yield lambda epoch: bar.update(task, advance=1, epoch=epoch + 1)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of each image, on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                model(images[start : start + batch_size].to(device)).argmax(1).cpu()
                for start in range(0, len(images), batch_size)
            ]
        )


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int = NUM_DIGIT_CLASSES
) -> Evaluation:
    """Accuracy, per-class accuracy and confusion matrix on a labelled set.

    Args:
        model: Classifier returning logits.
        images: Input images, shape (N, 1, 32, 32).
        labels: True classes, shape (N,).
        num_classes: Number of classes.

    Returns:
        The evaluation.
    """
    predictions = predict(model, images)
    truth = labels.cpu()
    confusion = torch.bincount(truth * num_classes + predictions, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).numpy()  # (true, predicted)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / support, np.nan)
    return Evaluation(float((predictions == truth).float().mean()), per_class.tolist(), confusion)


def confusion_matrix_png(confusion: np.ndarray, title: str = "LeNet-5 confusion matrix") -> bytes:
    """Renders a confusion matrix (rows: true class) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5.5))
    try:
        image = axes.imshow(confusion, cmap="Blues")
        figure.colorbar(image, ax=axes)
        size = confusion.shape[0]
        axes.set_xticks(range(size))
        axes.set_yticks(range(size))
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(title)
        threshold = confusion.max() / 2 if confusion.size else 0
        for row in range(size):
            for column in range(size):
                count = int(confusion[row, column])
                if count:
                    color = "white" if count > threshold else "black"
                    axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    except BaseException:
        plt.close(figure)
        raise
    return figure_png(figure)


def export_onnx(model: nn.Module, path: Path | str, opset: int = 17) -> Path:
    """Exports a LeNet-5 to ONNX with a dynamic batch axis, atomically.

    Args:
        model: Model taking (B, 1, 32, 32) images.
        path: Destination ``.onnx`` file.
        opset: ONNX opset version.

    Returns:
        The destination path.
    """
    import io
    import warnings

    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(1, 1, LENET_INPUT_SIZE, LENET_INPUT_SIZE, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it is the one
        # that handles every model here without extra dependencies.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return atomic_write_bytes(path, buffer.getvalue())


def check_onnx(path: Path | str, model: nn.Module, images: torch.Tensor) -> float:
    """Validates an exported model and measures its parity with PyTorch.

    Args:
        path: The ``.onnx`` file.
        model: The PyTorch model it was exported from.
        images: Sample inputs, shape (B, 1, 32, 32).

    Returns:
        Largest absolute logit difference between onnxruntime and PyTorch.
    """
    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": images.cpu().numpy().astype(np.float32)})
    device = next(model.parameters()).device
    with torch.no_grad():
        torch_logits = model.eval()(images.to(device)).cpu().numpy()
    return float(np.max(np.abs(onnx_logits - torch_logits)))


@dataclass
class TrainingReport:
    """Everything ``cloudpose lenet train`` reports and writes.

    Attributes:
        source: Data source name.
        train_samples: Training samples used (before oversampling).
        test_samples: Test samples.
        epochs: Epochs trained.
        seed: Seed used.
        device: Device used.
        accuracy: Test accuracy.
        per_class_accuracy: Test accuracy of each class (``None`` for a
            class without test images).
        confusion_matrix: ``[true][predicted]`` counts.
        onnx_max_abs_difference: onnxruntime versus PyTorch on test images.
        train_seconds: Wall time of training.
        epoch_losses: Mean training loss per epoch.
        oversample_class: Class oversampled, if any.
        class_weight_class: Class up-weighted, if any.
        files: Written file kind -> path.
    """

    source: str
    train_samples: int
    test_samples: int
    epochs: int
    seed: int
    device: str
    accuracy: float
    per_class_accuracy: list[float | None]
    confusion_matrix: list[list[int]]
    onnx_max_abs_difference: float
    train_seconds: float
    epoch_losses: list[float]
    oversample_class: int | None
    class_weight_class: int | None
    files: dict[str, str]


def run_lenet_training(
    config: TrainConfig,
    out_dir: Path | str,
    mnist_dir: Path | str | None = None,
    progress: bool = False,
    parity_samples: int = 64,
) -> TrainingReport:
    """Loads data, trains, evaluates, and writes PNG, JSON and ONNX outputs.

    Args:
        config: Training settings.
        out_dir: Output folder for ``confusion_matrix.png``, ``metrics.json``
            and ``lenet5.onnx``.
        mnist_dir: Folder with MNIST IDX files; scikit-learn digits if omitted.
        progress: Show a progress bar while training.
        parity_samples: Test images used for the ONNX parity check.

    Returns:
        The report that was also written as ``metrics.json``.
    """
    data = load_mnist(mnist_dir) if mnist_dir is not None else load_sklearn_digits(config.seed)
    started = time.perf_counter()
    result = train_lenet(data, config, progress=progress)
    train_seconds = time.perf_counter() - started
    evaluation = evaluate(result.model, data.test_images, data.test_labels)

    output = Path(out_dir)
    files = {
        "confusion_matrix": str(output / "confusion_matrix.png"),
        "onnx": str(output / "lenet5.onnx"),
        "metrics": str(output / "metrics.json"),
    }
    atomic_write_bytes(files["confusion_matrix"], confusion_matrix_png(evaluation.confusion))
    export_onnx(result.model, files["onnx"])
    parity = check_onnx(files["onnx"], result.model, data.test_images[:parity_samples])

    train_samples = (
        len(data.train_labels) if config.limit is None else min(config.limit, len(data.train_labels))
    )
    report = TrainingReport(
        source=data.source,
        train_samples=train_samples,
        test_samples=len(data.test_labels),
        epochs=len(result.epoch_losses),
        seed=config.seed,
        device=result.device,
        accuracy=evaluation.accuracy,
        per_class_accuracy=[None if np.isnan(value) else value for value in evaluation.per_class_accuracy],
        confusion_matrix=evaluation.confusion.tolist(),
        onnx_max_abs_difference=parity,
        train_seconds=train_seconds,
        epoch_losses=result.epoch_losses,
        oversample_class=config.oversample_class,
        class_weight_class=config.class_weight_class,
        files=files,
    )
    atomic_write_text(files["metrics"], json.dumps(asdict(report), indent=2) + "\n")
    return report


def write_idx(path: Path | str, array: np.ndarray, compress: bool | None = None) -> Path:
    """Writes an array as an IDX file (gzip-compressed for ``.gz`` paths).

    Handy for converting other digit sets to the MNIST layout.

    Args:
        path: Destination.
        array: Array of a dtype IDX supports (uint8, int8, int16, int32,
            float32, float64).
        compress: Force gzip on or off; defaults to the ``.gz`` suffix.

    Returns:
        The destination path.
    """
    codes = {np.dtype(code).newbyteorder("="): type_code for type_code, code in _IDX_DTYPES.items()}
    dtype = np.asarray(array).dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=dtype.newbyteorder(">")).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    return atomic_write_bytes(path, payload)


def format_per_class(per_class_accuracy: Sequence[float | None]) -> str:
    """One line ``0: 100.0%  1: 97.2% ...`` of per-class accuracies."""
    return "  ".join(
        f"{digit}: " + ("n/a" if accuracy is None or np.isnan(accuracy) else f"{accuracy * 100:.1f}%")
        for digit, accuracy in enumerate(per_class_accuracy)
    )
