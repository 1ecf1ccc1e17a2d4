"""``cloudpose lenet``, ``cloudpose plot`` and ``cloudpose exam`` commands.

Mounted by :mod:`pipeline.cli.app`. torch and matplotlib are imported inside the
commands so ``cloudpose --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.extras import ExtrasGroup

# ExtrasGroup: without the training extras, a command says in one line what to install.
lenet_app = typer.Typer(
    cls=ExtrasGroup,
    help="LeNet-5 on handwritten digits: train, evaluate, export to ONNX.",
    no_args_is_help=True,
    add_completion=False,
)
plot_app = typer.Typer(
    cls=ExtrasGroup, help="Plots of cloudpose's building blocks.", no_args_is_help=True, add_completion=False
)

DEVICES = ("auto", "cpu", "cuda")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@lenet_app.command("train")
def lenet_train(
    mnist: Annotated[
        Path | None,
        typer.Option(help="Folder with MNIST IDX files (.gz or not); scikit-learn digits otherwise."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Passes over the training set [default: 20 on the digits, 8 on MNIST]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, initialisation and shuffling.")] = 0,
    out: Annotated[
        Path, typer.Option(help="Folder for confusion_matrix.png, metrics.json, lenet5.onnx.")
    ] = Path("artifacts/lenet"),
    oversample_class: Annotated[
        int | None, typer.Option(help="Repeat this class's training samples (for a weak class).")
    ] = None,
    oversample_factor: Annotated[int, typer.Option(min=1, help="Appearances per oversampled sample.")] = 2,
    class_weight_class: Annotated[int | None, typer.Option(help="Up-weight this class in the loss.")] = None,
    class_weight: Annotated[float, typer.Option(help="Loss weight of that class (> 0).")] = 2.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads; LeNet-5 is too small to gain from more.")
    ] = 1,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Train on the first N samples only (smoke runs).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train LeNet-5, print test accuracy per class, write the confusion matrix, metrics and ONNX model."""
    if device not in DEVICES:
        raise _fail(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    for name, value in (
        ("--oversample-class", oversample_class),
        ("--class-weight-class", class_weight_class),
    ):
        if value is not None and not 0 <= value <= 9:
            raise _fail(f"{name} must be a digit 0-9, got {value}")

    from pipeline.exam.lenet_train import TrainConfig, format_per_class, run_lenet_training

    config = TrainConfig(
        epochs=epochs,
        seed=seed,
        device=device,
        limit=limit,
        oversample_class=oversample_class,
        oversample_factor=oversample_factor,
        class_weight_class=class_weight_class,
        class_weight=class_weight,
        num_threads=threads,
    )
    try:
        report = run_lenet_training(config, out, mnist_dir=mnist, progress=progress)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error)) from None
    typer.echo(
        f"{report.source}: {report.train_samples} training / {report.test_samples} test images, "
        f"{report.epochs} epochs on {report.device} in {report.train_seconds:.1f} s"
    )
    typer.echo(f"test accuracy {report.accuracy * 100:.2f}%")
    typer.echo(f"per class: {format_per_class(report.per_class_accuracy)}")
    typer.echo(f"ONNX parity max |diff| {report.onnx_max_abs_difference:.1e}")
    typer.echo("wrote " + ", ".join(report.files.values()))


@plot_app.command("elu")
def plot_elu(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("artifacts/plots/elu.png"),
) -> None:
    """Plot ELU for several alphas and its derivative next to ReLU.

    Against ReLU, ELU has two advantages: negative inputs keep a gradient
    (ELU(x) + alpha > 0), so units do not die; and negative outputs pull mean
    activations towards zero, which speeds up learning. Its disadvantage: the
    exponential makes it slower to compute, and it saturates for very negative
    inputs instead of giving ReLU's exact zeros.
    """
    from pipeline.exam.worked import write_elu_plot

    typer.echo(f"wrote {write_elu_plot(out)}")


def exam(
    out: Annotated[Path | None, typer.Option(help="Also write the markdown report to this file.")] = None,
    dimred: Annotated[
        bool, typer.Option(help="Include the PCA-vs-autoencoder table (trains three autoencoders).")
    ] = False,
) -> None:
    """Print the worked deep-learning examples, each answer computed and checked by autograd."""
    from pipeline.exam.worked import ExamCheckError, build_report
    from pipeline.files import atomic_write_text

    try:
        report = build_report(include_dimred=dimred)
    except ExamCheckError as error:
        raise _fail(f"a worked example failed its autograd check: {error}") from None
    typer.echo(report, nl=False)
    if out is not None:
        atomic_write_text(out, report)
        typer.echo(f"wrote {out}", err=True)
