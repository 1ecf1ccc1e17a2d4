"""The ``cloudpose`` command line: one thin command per verb.

Heavy imports (torch, onnxruntime, uvicorn) happen inside the commands so ``--help`` is fast.
Expected failures print one line to stderr and exit 1.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.extras import REPOSITORY, ExtrasGroup

if TYPE_CHECKING:
    import torch

    from pipeline.training.config import TrainConfig

app = typer.Typer(
    cls=ExtrasGroup,
    help="cloudpose: rigid pose of a known object in a point cloud (train, export, evaluate, serve).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _shipped(relative: str) -> Path:
    """A path of the repository (the shipped store and model), found from any working folder;
    relative to the working folder when cloudpose runs from an installed copy without them."""
    beside = REPOSITORY / relative
    return beside if beside.exists() else Path(relative)


DEFAULT_MODEL = _shipped("data/objects") / "bunny" / "model.onnx"
StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Use this object store alone (default: the shipped objects and yours, in CLOUDPOSE_STORE, "
        "else the user data folder's cloudpose/objects).",
        show_default=False,
    ),
]


@contextmanager
def expected_failures() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""
    from cloudpose.io.clouds import CloudError
    from cloudpose.store.package import StoreError
    from pipeline.data.mesh import MeshError
    from pipeline.training.config import ConfigError

    handled: tuple[type[BaseException], ...] = (
        ConfigError,
        MeshError,
        CloudError,
        StoreError,
        FileNotFoundError,
    )
    try:
        from cloudpose.estimation.inference import ModelLoadError

        handled += (ModelLoadError,)
    except ImportError:  # serving extras not installed
        pass
    try:
        yield
    except handled as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def _parse_hidden(text: str | None) -> list[int] | None:
    if text is None:
        return None
    text = text.strip()
    if text in ("", "none", "[]"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        typer.echo(f"error: --hidden takes comma-separated widths like 256,256, got {text!r}", err=True)
        raise typer.Exit(1) from None


TrainMeshOption = Annotated[
    Path | None, typer.Option(help="Object mesh (PLY/OBJ/STL/OFF); the bunny by default.")
]
HiddenOption = Annotated[
    str | None, typer.Option(help="Hidden widths, e.g. 256,256; 'none' for one linear layer.")
]
StepsOption = Annotated[
    int | None, typer.Option(help="Step budget (the LR schedule spans it, unless --schedule-by time).")
]
TimeBudgetOption = Annotated[
    float | None,
    typer.Option(
        help="Stop after this many seconds; given without --steps, the LR schedule spans it "
        "(--schedule-by time)."
    ),
]
ScheduleByOption = Annotated[
    str | None,
    typer.Option(help="steps: the LR decays along the step budget; time: along whichever budget ends first."),
]
FreshOption = Annotated[bool, typer.Option("--fresh", help="Ignore an existing checkpoint and start over.")]
NprocPerNodeOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Data-parallel processes on this node (one per GPU); each takes --batch-size clouds a step.",
    ),
]


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML file overriding the defaults.")] = None,
    mesh: TrainMeshOption = None,
    n_points: Annotated[int | None, typer.Option(help="Points per cloud, N.")] = None,
    hidden: HiddenOption = None,
    activation: Annotated[str | None, typer.Option(help="relu, elu or none.")] = None,
    steps: StepsOption = None,
    batch_size: Annotated[int | None, typer.Option(help="Clouds per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    lambda_orth: Annotated[float | None, typer.Option(help="Weight of ||R^T R - I||^2.")] = None,
    l1_lambda: Annotated[float | None, typer.Option(help="Weight of the L1 penalty on weights.")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Max gradient norm; 0 disables.")] = None,
    time_budget_s: TimeBudgetOption = None,
    schedule_by: ScheduleByOption = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the pose stream.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run folder (checkpoint, metrics).")] = None,
    fresh: FreshOption = False,
    nproc_per_node: NprocPerNodeOption = 1,
    nnodes: Annotated[int, typer.Option(min=1, help="Nodes taking part (multi-node runs).")] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This node's rank, 0 to nnodes - 1.")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="Address of node 0 (multi-node runs).")] = None,
    master_port: Annotated[int, typer.Option(help="Port of node 0 (multi-node runs).")] = 29500,
) -> None:
    """Train a pose regressor on synthesized posed clouds; resumes from the run folder's checkpoint
    (with the same settings only: --fresh starts over).

    With --nproc-per-node K (and --nnodes for several nodes) the command re-launches itself
    through torchrun: K data-parallel processes, rank 0 writing the run folder.
    """
    from pipeline.training import distributed

    with distributed.ends_rank_process(), expected_failures():
        from pipeline.training.config import load_config
        from pipeline.training.train import resolve_device

        if schedule_by is None and time_budget_s is not None and steps is None:
            schedule_by = "time"  # a budget in seconds alone: the rate must have decayed when it ends

        overrides = {
            "mesh": str(mesh) if mesh else None,
            "n_points": n_points,
            "hidden": _parse_hidden(hidden),
            "activation": activation,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "lambda_orth": lambda_orth,
            "l1_lambda": l1_lambda,
            "grad_clip": grad_clip,
            "time_budget_s": time_budget_s,
            "schedule_by": schedule_by,
            "seed": seed,
            "device": device,
            "out_dir": str(out_dir) if out_dir else None,
        }
        cfg = load_config(config, overrides)
        resolved = resolve_device(cfg.device)
        if (nproc_per_node > 1 or nnodes > 1) and not distributed.launched_by_torchrun():
            distributed.check_launch(resolved, nproc_per_node, nnodes, node_rank, master_addr)
            typer.echo(
                f"launching {nproc_per_node * nnodes} training processes ({nproc_per_node} on this node) "
                "through torchrun",
                err=True,
            )
            forwarded = _train_flags(config, {**overrides, "hidden": hidden}, fresh)
            launch = distributed.torchrun_command(
                forwarded, nproc_per_node, nnodes, node_rank, master_addr, master_port
            )
            raise typer.Exit(_run_launcher(launch))
        _train_here(cfg, resolved, fresh)


def _train_here(cfg: TrainConfig, resolved: torch.device, fresh: bool) -> None:
    """Train in this process (one rank of a torchrun group, or alone) and, on rank 0, print the
    summary as JSON."""
    from pipeline.training import distributed
    from pipeline.training.progress import ProgressReport
    from pipeline.training.train import describe_device, time_to_bar
    from pipeline.training.train import train as run_training

    main_rank = distributed.rank_from_environment() == 0
    if main_rank:
        typer.echo(f"training on {describe_device(resolved)}", err=True)
    if distributed.launched_by_torchrun():
        # torchrun stops its workers with SIGTERM: let rank 0 save a checkpoint first.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    by_time = cfg.schedule_by == "time"
    if main_rank and by_time:
        typer.echo(
            f"the learning rate decays over {cfg.time_budget_s:g} s (or {cfg.steps} steps, if sooner)",
            err=True,
        )
    total, unit = (cfg.time_budget_s, "s") if by_time else (cfg.steps, "steps")
    with ProgressReport("train", total, unit=unit, enabled=main_rank) as bar:

        def report(step: int, total_steps: int, values: dict[str, float]) -> None:
            status = f"step {step}, loss {values['total']:.2e}, val median {values['val_median_deg']:.4f} deg"
            bar.update(min(values["elapsed_s"], total) if by_time else step, status)

        try:
            result = run_training(
                cfg, progress=report, fresh=fresh, log=lambda line: typer.echo(line, err=True)
            )
        finally:
            distributed.cleanup()
    if not main_rank:
        return
    summary = {
        "device": result.device,
        "world_size": result.world_size,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "elapsed_s": round(result.elapsed_s, 2),
        "samples_per_s": round(result.samples_per_s),
        "stopped_because": result.stopped_because,
        "time_to_bar": time_to_bar(result.history),
        "checkpoint": str(result.checkpoint),
        **{key: round(value, 6) for key, value in result.validation.items() if isinstance(value, float)},
    }
    typer.echo(json.dumps(summary, indent=2))


def _train_flags(config: Path | None, values: dict[str, object], fresh: bool) -> list[str]:
    """The ``train`` command line that reproduces these options (for the launched processes)."""
    flags = ["train"]
    if config is not None:
        flags += ["--config", str(config)]
    for name, value in values.items():
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return [*flags, "--fresh"] if fresh else flags


def _run_launcher(command: list[str]) -> int:
    """Run torchrun and return its exit status; Ctrl-C reaches its workers too, so wait for them
    to save a checkpoint and stop."""
    import subprocess

    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return process.wait()


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Checkpoint file or run folder holding checkpoint.pt.")],
    out: Annotated[Path, typer.Option(help="Folder for model.onnx, model.json, template.npy.")] = Path(
        "artifacts/default"
    ),
) -> None:
    """Export a checkpoint to ONNX with its sidecar JSON; checks it with onnx.checker and onnxruntime."""
    with expected_failures():
        from pipeline.training.export import export_model

        checkpoint = run / "checkpoint.pt" if run.is_dir() else run
        result = export_model(checkpoint, out)
        typer.echo(
            f"exported {result.sidecar['model_id']} to {result.model_path} "
            f"({result.model_path.stat().st_size} bytes, parity max |diff| {result.parity_max_abs_diff:.1e})"
        )


@app.command("eval")
def evaluate(
    model: Annotated[
        Path, typer.Argument(help="Exported model.onnx of either kind (sidecar beside it); the shipped one.")
    ] = DEFAULT_MODEL,
    count: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Held-out poses [default: 10000 for an exam-setting model, 500 for an order-free one].",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Held-out stream seed.")] = 0,
    refine: Annotated[
        bool,
        typer.Option("--refine/--no-refine", help="Order-free models: refine as the service does."),
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for eval.json and eval.png [default: the model's folder; artifacts/eval/NAME "
            "for a model of the object store]."
        ),
    ] = None,
) -> None:
    """Score an exported model on seeded held-out poses through the service's inference code.

    An exam-setting model sees posed copies of its template; an order-free model (the shipped
    one) fresh 1024-point samples of its surface, answered as the service answers them.
    """
    with expected_failures():
        from cloudpose.estimation.inference import PoseEstimator
        from cloudpose.store.package import record_in_model_sidecar
        from pipeline.evaluation.evaluate import DEFAULT_COUNT, evaluate_model, format_table, write_report
        from pipeline.training.progress import ProgressReport

        order_free = PoseEstimator(model).order_free
        total = count or DEFAULT_COUNT["order_free" if order_free else "exam"]
        in_store = (model.parent / "object.json").is_file()
        with ProgressReport("eval", total, unit="clouds", estimate_after=20 if order_free else None) as bar:
            evaluation = evaluate_model(model, count=total, seed=seed, refine=refine, progress=bar.update)
        typer.echo(f"{evaluation.metrics['model_id']}: {total} held-out poses (seed {seed})")
        typer.echo(format_table(evaluation.metrics))
        json_path, png_path = write_report(evaluation, out or _eval_folder(model, in_store))
        if not in_store:  # a store package changes only as a whole (bench --record)
            record_in_model_sidecar(model, "evaluation", evaluation.metrics)
        typer.echo(f"wrote {json_path} and {png_path}")


def _eval_folder(model: Path, in_store: bool) -> Path:
    return Path("artifacts/eval") / model.parent.name if in_store else model.parent


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output .npz file.")],
    count: Annotated[int, typer.Option(min=1, help="Number of posed clouds.")] = 1000,
    n_points: Annotated[int, typer.Option(min=1, help="Points per cloud, N.")] = 1024,
    template_seed: Annotated[int, typer.Option(help="Seed of the template's surface sample.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the poses.")] = 0,
    translation_range: Annotated[float, typer.Option(min=0.0, help="± range per axis, in diagonals.")] = 0.5,
    mesh: Annotated[Path | None, typer.Option(help="Object mesh; the bunny by default.")] = None,
) -> None:
    """Write a seeded dataset of posed template copies (clouds, poses, template) to an .npz file."""
    with expected_failures():
        from pipeline.data.mesh import load_mesh
        from pipeline.data.synth import held_out_batch, make_template, write_dataset

        loaded = load_mesh(mesh)
        template = make_template(loaded, n_points, template_seed)
        data = held_out_batch(template, count, translation_range * loaded.diagonal, seed)
        meta = {
            "mesh": loaded.name,
            "mesh_sha256": loaded.sha256,
            "diagonal": loaded.diagonal,
            "n_points": n_points,
            "template_seed": template_seed,
            "seed": seed,
            "translation_range": translation_range,
            "convention": "points = template @ rotation + translation (row vectors)",
        }
        path = write_dataset(out, template, data, meta)
        typer.echo(f"wrote {count} clouds of {n_points} points to {path}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Serve this object store alone (default: the shipped objects and yours, in "
            "CLOUDPOSE_STORE, else the user data folder's cloudpose/objects).",
            show_default=False,
        ),
    ] = None,
    default_object: Annotated[
        str | None, typer.Option(help="Object /v1/pose answers for (CLOUDPOSE_DEFAULT_OBJECT, bunny).")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Serve this bare exported model.onnx instead of the store.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Worker processes on one socket; use the number of CPU cores (nproc)."),
    ] = 1,
) -> None:
    """Serve the HTTP API with uvicorn: every object of the store, or one exported model.

    Settings come from CLOUDPOSE_* environment variables (README: "Running the service"); the
    options here override them. Objects added to or removed from the store are picked up within
    seconds (CLOUDPOSE_WATCH_STORE_S), or at once on SIGHUP. With --workers K, SIGHUP to this
    process replaces the workers one by one with ones that reload the store.
    """
    with expected_failures():
        import os
        import tempfile

        from cloudpose.estimation.served import ObjectRegistry
        from cloudpose.settings import STORE_VARIABLES, Settings

        overrides = {"store": store, "default_object": default_object, "model_path": model}
        for key, value in overrides.items():
            if value is not None:  # worker processes build their settings from the environment
                os.environ[STORE_VARIABLES.get(key, f"CLOUDPOSE_{key.upper()}")] = str(value)
        ObjectRegistry.load(Settings())  # fail here, with one line, rather than inside the server
        if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # /metrics then sums every worker, whichever answers the scrape.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cloudpose-metrics-")
        # The service's own program takes over this process (same pid, so signals reach it).
        command = [sys.executable, "-m", "service", "--host", host, "--port", str(port)]
        command += ["--workers", str(workers)]
        sys.stdout.flush()
        os.execv(sys.executable, command)


@app.command()
def predict(
    cloud: Annotated[Path, typer.Argument(help="Cloud file: .ply, .pcd, .xyz or .npy.")],
    object_name: Annotated[
        str | None, typer.Option("--object", help="Object of the store (default: the default object).")
    ] = None,
    store: StoreOption = None,
    model: Annotated[
        Path | None, typer.Option(help="A bare exported model.onnx instead of the store.")
    ] = None,
    units: Annotated[str | None, typer.Option(help="What the points are in (mm, m, in, ...).")] = None,
    refine: Annotated[
        bool, typer.Option("--refine/--no-refine", help="Register against the surface.")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the cloud moved into the object's frame (the mesh file's coordinates and units) "
            "to this .ply file."
        ),
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option(help="Draw the cloud and the object at the found pose, in three views, to this .png."),
    ] = None,
) -> None:
    """Estimate a cloud's pose locally, with the service's code but no server; prints JSON.

    The shipped store is found from any working folder.
    """
    with expected_failures():
        from cloudpose.estimation.served import ObjectRegistry
        from cloudpose.io.clouds import read_cloud_file
        from cloudpose.settings import Settings

        for path, suffix, option in ((out, ".ply", "--out"), (render, ".png", "--render")):
            if path is not None and path.suffix.lower() != suffix:
                typer.echo(f"error: {option} writes a {suffix} file, got {path.name!r}", err=True)
                raise typer.Exit(1)

        settings = Settings(store=store, model_path=model)
        if object_name is None or model is not None:
            served = ObjectRegistry.load(settings).get(None)
        else:
            from cloudpose.estimation.served import ServedObject

            served = ServedObject.from_package(settings.object_store().get(object_name))
        points = read_cloud_file(cloud.name, cloud.read_bytes(), settings.max_points)
        served.check_cloud(points, where=cloud.name)
        (pose,) = served.estimate([points], refine, units)
        typer.echo(
            json.dumps(
                {
                    **pose.to_dict(),
                    "object": served.name,
                    "model_id": served.model_id,
                    "n_points": len(points),
                },
                indent=2,
            )
        )
        if out is not None or render is not None:
            _write_fit_files(served, pose, points, out, render)


def _write_fit_files(served, pose, points, out: Path | None, render: Path | None) -> None:
    """``predict --out`` and ``--render``: the aligned cloud and a picture of the fit."""
    import numpy as np

    from pipeline.cli.fit_files import render_fit, write_ply

    # canonical (mesh file frame, cloud units) = points @ rotation + translation; x scale: object units
    aligned = (np.asarray(points, dtype=np.float64) @ pose.rotation + pose.translation) * pose.scale
    if out is not None:
        typer.echo(f"wrote {write_ply(out, aligned)} ({len(points)} points in the object's frame)", err=True)
    if render is not None:
        estimator = served.estimator
        internal = estimator.surface.points if estimator.surface is not None else estimator.template
        model_file_frame = np.asarray(internal, dtype=np.float64) + served.centroid
        model_at_pose = (model_file_frame / pose.scale) @ pose.object_rotation + pose.object_translation
        confidence = (pose.confidence or {}).get("fitness")
        title = (
            f"{served.name}: {'found' if pose.found else 'not found'}"
            + (f", fitness {confidence:.3f}" if isinstance(confidence, float) else "")
            + f", {len(points)} points"
        )
        typer.echo(f"wrote {render_fit(render, points, model_at_pose, title)}", err=True)


@app.command()
def detect(
    frame: Annotated[
        Path, typer.Argument(help="A whole frame: a cloud file, or a depth image (.png, .npy) with --fx ...")
    ],
    objects: Annotated[
        str | None, typer.Option(help="Comma-separated objects to look for (default: every one).")
    ] = None,
    store: StoreOption = None,
    units: Annotated[str, typer.Option(help="What a cloud's points are in.")] = "m",
    max_instances: Annotated[int | None, typer.Option(min=1, help="At most this many detections.")] = None,
    fx: Annotated[float | None, typer.Option(help="Depth image: focal length x, pixels.")] = None,
    fy: Annotated[float | None, typer.Option(help="Depth image: focal length y, pixels.")] = None,
    cx: Annotated[float | None, typer.Option(help="Depth image: principal point x, pixels.")] = None,
    cy: Annotated[float | None, typer.Option(help="Depth image: principal point y, pixels.")] = None,
    depth_scale: Annotated[float, typer.Option(help="Depth image: metres per raw unit.")] = 0.001,
) -> None:
    """Find every instance of the store's objects in a sensor frame locally, with the service's
    code but no server; prints JSON (detections best first)."""
    with expected_failures():
        from cloudpose.detection.detect import detect as detect_frame
        from cloudpose.estimation.served import ObjectRegistry
        from cloudpose.io.clouds import read_frame_file
        from cloudpose.io.frames import depth_frame_points
        from cloudpose.settings import Settings

        settings = Settings(store=store)
        registry = ObjectRegistry.load(settings)
        names = [name.strip() for name in objects.split(",")] if objects else list(registry.objects)
        chosen = {name: registry.get(name) for name in names}
        data = frame.read_bytes()
        if fx is not None or frame.suffix.lower() == ".png":
            camera = {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "depth_scale": depth_scale}
            points, units = depth_frame_points(frame.name, data, camera, settings.max_frame_points), "m"
        else:
            points = read_frame_file(frame.name, data, settings.max_frame_points)
        report = detect_frame(points, chosen, units, max_instances=max_instances)
        typer.echo(
            json.dumps(
                {
                    "detections": [detection.to_dict() for detection in report.detections],
                    "n_points": len(points),
                    "segments": report.segments,
                    "timings_ms": {name: round(value, 1) for name, value in report.timings_ms.items()},
                },
                indent=2,
            )
        )


@app.command()
def prune(
    run: Annotated[Path, typer.Argument(help="Checkpoint file or run folder holding checkpoint.pt.")],
    sparsity: Annotated[
        list[float] | None, typer.Option(help="Fraction of weights to remove; repeat for several levels.")
    ] = None,
    scope: Annotated[
        str, typer.Option(help="global (one threshold) or layer (same sparsity per layer).")
    ] = "global",
    finetune_steps: Annotated[int, typer.Option(min=0, help="Fine-tuning steps with the masks held.")] = 300,
    count: Annotated[int, typer.Option(min=1, help="Held-out poses scored per level.")] = 2000,
    out: Annotated[Path, typer.Option(help="Folder for one exported model per level.")] = Path(
        "artifacts/pruned"
    ),
) -> None:
    """Prune a model by weight magnitude, fine-tune, export each level; tabulate accuracy vs size."""
    with expected_failures():
        if scope not in ("global", "layer"):
            typer.echo(f"error: --scope must be global or layer, got {scope!r}", err=True)
            raise typer.Exit(1)
        levels = sparsity or [0.5, 0.8, 0.9, 0.95]
        if not all(0 <= level < 1 for level in levels):
            typer.echo("error: --sparsity values must be in [0, 1)", err=True)
            raise typer.Exit(1)
        from pipeline.exam.prune import format_prune_table, prune_model

        checkpoint = run / "checkpoint.pt" if run.is_dir() else run
        rows = prune_model(
            checkpoint, levels, out, scope=scope, finetune_steps=finetune_steps, eval_count=count
        )
        typer.echo(format_prune_table(rows))
        typer.echo(f"models in {out}/s<percent>/model.onnx; table in {out / 'prune.json'}")


ScenesOption = Annotated[
    bool,
    typer.Option("--scenes", help="Score detection in whole cluttered frames (the store's objects) instead."),
]
FramesOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="With --scenes: frames (VGA; both detectors together: about 1 s a frame for the bunny, "
        "3 s for three parts).",
    ),
]
BopOption = Annotated[
    Path | None,
    typer.Option(
        "--bop",
        help="Detect in a BOP dataset's test images (DIR/models, DIR/test) instead, and score by the BOP "
        "criteria: writes OUT/cloudpose_bop.csv (the BOP results file) and OUT/bop_scores.txt/.json. "
        "The dataset's objects go into a temporary store, or into --store, where they are kept and reused.",
        show_default=False,
    ),
]


@app.command("bench")
def bench_command(
    model: Annotated[
        Path, typer.Argument(help="Exported order-free model.onnx (default: the shipped model).")
    ] = DEFAULT_MODEL,
    count: Annotated[int, typer.Option(min=1, help="Cases per set.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the sets and of RANSAC.")] = 0,
    sets: Annotated[
        str, typer.Option(help="Comma-separated sets.")
    ] = "shuffled,resampled,small,noisy,partial,partial_noisy",
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods.")
    ] = "network,network+refine,fpfh_ransac_icp,pca_icp",
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.txt and plots.")] = Path(
        "artifacts/bench"
    ),
    mesh: Annotated[Path | None, typer.Option(help="Object mesh; the bunny by default.")] = None,
    object_name: Annotated[
        str | None, typer.Option("--object", help="Bench an object of the store (instead of MODEL).")
    ] = None,
    store: StoreOption = None,
    record: Annotated[
        bool, typer.Option("--record", help="With --object: put the figures into the object's package.")
    ] = False,
    scenes: ScenesOption = False,
    frames: FramesOption = 50,
    bop: BopOption = None,
) -> None:
    """Benchmark cloudpose against FPFH+RANSAC+ICP and PCA+ICP on seeded sensor-like sets, or detection
    in cluttered frames (--scenes) against clustering + FPFH, or in a BOP dataset's images (--bop)."""
    if bop is not None:
        return bench_bop(bop, store, out)
    if scenes:
        bench_scenes(frames, seed, store, out)
        return
    with expected_failures():
        from pipeline.evaluation.bench import format_table, write_results
        from pipeline.evaluation.bench_cli import bench, bench_object
        from pipeline.training.progress import ProgressReport

        set_names = [name.strip() for name in sets.split(",") if name.strip()]
        method_names = [name.strip() for name in methods.split(",") if name.strip()]
        total = len(set_names) * count
        typer.echo(
            f"{total} clouds ({count} per set: {', '.join(set_names)}) for {', '.join(method_names)} "
            "(the classical baselines take 50-300 ms a cloud); an estimate follows the first clouds",
            err=True,
        )
        with ProgressReport("bench", total, unit="clouds", estimate_after=min(10, total)) as bar:
            options = {
                "count": count,
                "seed": seed,
                "set_names": set_names,
                "method_names": method_names,
                "progress": bar.say,
                "on_case": bar.update,
            }
            if object_name is not None:
                from cloudpose.store.package import open_store

                results = bench_object(open_store(store).get(object_name), **options)
            else:
                results = bench(model, mesh_path=mesh, **options)
        typer.echo(format_table(results))
        if record and object_name is not None:
            from cloudpose.store.package import open_store
            from pipeline.objects.adding import record_bench

            package = record_bench(
                open_store(store), object_name, results, "cloudpose " + shlex.join(sys.argv[1:]), seed
            )
            typer.echo(f"recorded the figures in {package.path}")
        paths = write_results(results, out)
        typer.echo("wrote " + ", ".join(str(path) for path in paths.values()))
        if "cdf" not in paths:
            from pipeline.extras import install_script

            typer.echo(
                f"no plots: they need matplotlib, one of the training extras ({install_script()} train)",
                err=True,
            )


def bench_scenes(frames: int, seed: int, store: Path | None, out: Path) -> None:
    """``cloudpose bench --scenes``: cloudpose's detector and the baselines on the same frames."""
    with expected_failures():
        from cloudpose.estimation.served import ObjectRegistry
        from cloudpose.settings import Settings
        from pipeline.evaluation import scene_bench
        from pipeline.files import atomic_write_json, atomic_write_text

        settings = Settings(store=store)
        registry = ObjectRegistry.load(settings)
        served_store = settings.object_store()
        targets, models = scene_bench.store_targets(served_store, registry.objects)
        if not targets:
            raise FileNotFoundError(f"no object of {served_store} has units: scenes are in metres")
        detectors = {
            "cloudpose": scene_bench.cloudpose_detector(
                {item.name: registry.objects[item.name] for item in targets}
            ),
            "clustering_fpfh": scene_bench.clustering_fpfh_detector(models),
        }
        if scene_bench.ppf_available():
            detectors["opencv_ppf"] = scene_bench.ppf_detector(models)
        else:
            typer.echo("opencv_ppf skipped: pip install opencv-contrib-python-headless to run it", err=True)
        typer.echo(
            f"{frames} VGA frames of {', '.join(models)} among {len(scene_bench.DISTRACTOR_SHAPES)} "
            f"distractor shapes, {len(detectors)} detectors",
            err=True,
        )

        def progress(done: int) -> None:
            if done % 5 == 0 or done == frames:
                typer.echo(f"  {done}/{frames} frames", err=True)

        results = scene_bench.run_scene_bench(
            detectors,
            scene_bench.scene_frames(targets, scene_bench.distractor_objects(), frames, seed),
            models,
            progress=progress,
        )
        table = scene_bench.format_table(results)
        typer.echo(table)
        atomic_write_text(out / "scenes.txt", table + "\n")
        atomic_write_json(out / "scenes.json", scene_bench.results_json(results))
        typer.echo(f"wrote {out / 'scenes.txt'}, {out / 'scenes.json'}")


def bench_bop(directory: Path, store: Path | None, out: Path) -> None:
    """``cloudpose bench --bop DIR``: the dataset's objects added (mm, without training), cloudpose's
    detector on every test image, the BOP results file and scores written, the table printed."""
    import tempfile

    from pipeline.data.bop import BopError

    with expected_failures(), tempfile.TemporaryDirectory(prefix="cloudpose-bop-") as temporary:
        from cloudpose.estimation.served import ServedObject
        from cloudpose.store.package import ObjectStore
        from pipeline.data.bop import read_dataset
        from pipeline.evaluation import bop as bop_bench
        from pipeline.evaluation.scene_bench import cloudpose_detector
        from pipeline.objects.adding import add_object

        try:
            dataset = read_dataset(directory)
            object_store = ObjectStore(store if store is not None else Path(temporary) / "objects")
            for model in dataset.models.values():
                if model.name not in object_store:  # a kept store's objects are reused
                    add_object(
                        model.name,
                        model.path,
                        store=object_store,
                        units="mm",
                        train=False,
                        bench_count=0,
                        runs_dir=Path(temporary) / "runs",
                        command="cloudpose " + shlex.join(sys.argv[1:]),
                    )
            served = {
                model.name: ServedObject.from_package(object_store.get(model.name))
                for model in dataset.models.values()
            }
            total = len(dataset.images)
            typer.echo(f"{total} images of {directory}, {len(served)} objects", err=True)

            def progress(done: int) -> None:
                if done % 10 == 0 or done == total:
                    typer.echo(f"  {done}/{total} images", err=True)

            run = bop_bench.run_bop_bench(dataset, cloudpose_detector(served), progress)
        except BopError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        paths = bop_bench.write_outputs(run, out)
        typer.echo(bop_bench.format_table(run.scores))
        for failure in run.failures:
            typer.echo(f"detector failed on {failure}", err=True)
        typer.echo("wrote " + ", ".join(str(path) for path in paths.values()))


object_app = typer.Typer(
    cls=ExtrasGroup,
    help="The object store: add a mesh as a served object, list, show, remove.",
    no_args_is_help=True,
)
app.add_typer(object_app, name="object")


UnitsOption = Annotated[
    str | None,
    typer.Option(help="What the file's numbers are in: mm, cm, m, in, ... (default: unnamed)."),
]
SurfaceToleranceOption = Annotated[
    str | None,
    typer.Option(
        help="How far the real part's surface may lie from the mesh: 0.5mm, 0.3% (of the "
        "diagonal) or a number in the file's units (default: 0.3% of the diagonal)."
    ),
]
PackagedModelOption = Annotated[
    Path | None,
    typer.Option(help="Package this exported model.onnx (of the same mesh) instead of training."),
]


def _require_training_extras() -> None:
    """Exit with one line when torch, which training needs, is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        from pipeline.extras import install_script

        typer.echo(
            "error: cloudpose object add trains a network, which needs the training extras "
            f"(torch is not installed): run {install_script()} train, or add without --train",
            err=True,
        )
        raise typer.Exit(1)


TrainOption = Annotated[
    bool,
    typer.Option(
        "--train/--no-train",
        help="Also train a network for the single-cloud fast path (needs the training extras; "
        "up to --time-budget-s). Without it the point-pair votes and the registration search "
        "answer, and the object is servable in seconds.",
    ),
]


@object_app.command("add")
def object_add(
    name: Annotated[str, typer.Argument(help="Object name (lower-case letters, digits, - and _).")],
    mesh_file: Annotated[Path, typer.Argument(help="Mesh file: PLY, OBJ, STL, OFF or GLB.")],
    units: UnitsOption = None,
    metres_per_unit: Annotated[
        float | None, typer.Option(min=0.0, help="One file unit in metres, for files in no named unit.")
    ] = None,
    surface_tolerance: SurfaceToleranceOption = None,
    model: PackagedModelOption = None,
    time_budget_s: Annotated[float, typer.Option(min=1.0, help="Training budget in seconds.")] = 600.0,
    train: TrainOption = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the object's training run (implies --train).")
    ] = False,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train the object again from scratch (implies --train).")
    ] = False,
    bench_count: Annotated[
        int, typer.Option(min=0, help="Clouds per set in the closing bench (0 skips it).")
    ] = 50,
    seed: Annotated[int, typer.Option(help="Seed of sampling, training and the bench.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    store: StoreOption = None,
    runs_dir: Annotated[Path, typer.Option(help="Where training runs go (one folder per object).")] = Path(
        "runs/objects"
    ),
) -> None:
    """Add a mesh to the object store: check it, find its symmetries, package it, bench it (and with
    --train, train and export a network first).

    Without --store the package goes to your store (CLOUDPOSE_STORE, else the user data folder's
    cloudpose/objects), served beside the shipped objects.
    """
    with expected_failures():
        from cloudpose.store.package import open_store
        from pipeline.objects.adding import add_object
        from pipeline.training.progress import ProgressReport

        if resume and retrain:
            typer.echo("error: choose one of --resume and --retrain", err=True)
            raise typer.Exit(1)
        train = train or resume or retrain
        if train and model is None:
            _require_training_extras()  # fail before the mesh checks, not after
        command = "cloudpose " + shlex.join(sys.argv[1:])
        result = add_object(
            name,
            mesh_file,
            store=open_store(store),
            units=units,
            metres_per_unit_value=metres_per_unit,
            surface_tolerance_text=surface_tolerance,
            model_path=model,
            time_budget_s=time_budget_s,
            train=train,
            mode="resume" if resume else "retrain" if retrain else "new",
            seed=seed,
            device=device,
            runs_dir=runs_dir,
            bench_count=bench_count,
            command=command,
            progress=lambda line: typer.echo(line, err=True),
            track=ProgressReport,
        )
        summary = {
            "object": result.package.name,
            "package": str(result.package.path),
            "symmetry": result.package.meta["symmetry"]["kind"],
            "timings_s": {key: round(value, 1) for key, value in result.timings_s.items()},
            "training": result.training,
            "bench": result.bench,
        }
        typer.echo(json.dumps(summary, indent=2))
        typer.echo(SERVING_HINT, err=True)


# After `object add` and `object remove`: how a running service learns of the change.
SERVING_HINT = (
    "a running `cloudpose serve` of this store sees the change within seconds (it looks every "
    "CLOUDPOSE_WATCH_STORE_S, 2 s); with that at 0, send it SIGHUP (kill -HUP PID) or restart it"
)


@object_app.command("list")
def object_list(store: StoreOption = None) -> None:
    """List the objects of the store: name, units, size, symmetry, model; the shipped ones marked."""
    with expected_failures():
        from cloudpose.store.package import LayeredStore, open_store

        opened = open_store(store)
        packages = opened.packages()
        if not packages:
            typer.echo(f"no objects in {opened}")
            return
        for package in packages:
            info = package.describe()
            units, diagonal = info["units"] or "-", info["size"]["diagonal"]
            shipped = isinstance(opened, LayeredStore) and opened.is_shipped(package.name)
            typer.echo(
                f"{info['name']:<16} units {units:<4} diagonal {diagonal:<10.4g} "
                f"symmetry {info['symmetry']['kind']:<10} model {info['model_id'] or '(search only)'}"
                + ("  [shipped]" if shipped else "")
            )


@object_app.command("show")
def object_show(name: str, store: StoreOption = None) -> None:
    """Everything the store knows of one object, as JSON."""
    with expected_failures():
        from cloudpose.store.package import open_store

        typer.echo(json.dumps(open_store(store).get(name).describe(), indent=2))


@object_app.command("remove")
def object_remove(name: str, store: StoreOption = None) -> None:
    """Delete an object's package from the store (its training run stays in runs/objects); the
    shipped objects cannot be removed."""
    with expected_failures():
        from cloudpose.store.package import open_store

        opened = open_store(store)
        opened.remove(name)
        typer.echo(f"removed {name} from {opened.root}")
        typer.echo(SERVING_HINT, err=True)


scene_app = typer.Typer(
    cls=ExtrasGroup,
    help="Depth frames of the store's objects on a cluttered table, with their true poses.",
    no_args_is_help=True,
)
app.add_typer(scene_app, name="scene")


SceneObjectsOption = Annotated[
    str | None,
    typer.Option(help="Comma-separated objects to put on the table (default: every one with units)."),
]
ExampleFrameOption = Annotated[
    bool,
    typer.Option(
        "--example",
        help="With one object and --count 1: also put the frame into the object's package as its "
        "example frame (example_frame.png, .json, .npy).",
    ),
]


def _scene_targets(packages: list, named: bool, store: object) -> list:
    """The packages' objects in metres, for a frame; ``named`` ones must all have units.

    Raises:
        StoreError: a named object without units, or no object with units at all.
    """
    from cloudpose.store.package import StoreError
    from pipeline.data.scenes import package_object

    if named:
        unitless = [package.name for package in packages if package.metres_per_unit is None]
        if unitless:
            raise StoreError(
                f"{', '.join(unitless)} was added without units, and a frame is in metres: "
                "add it again with --units"
            )
    targets = [package_object(package) for package in packages if package.metres_per_unit is not None]
    if not targets:
        raise StoreError(f"no object of {store} has units, and a frame is in metres")
    return targets


@scene_app.command("make")
def scene_make(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the frames' files.")],
    objects: SceneObjectsOption = None,
    count: Annotated[int, typer.Option(min=1, help="Frames.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the frames: one seed, one set of frames.")] = 0,
    copies: Annotated[int, typer.Option(min=0, help="Copies of each object per frame.")] = 1,
    distractors: Annotated[int, typer.Option(min=0, help="Distractor shapes per frame.")] = 2,
    scale: Annotated[
        float, typer.Option(min=0.1, max=2.0, help="Resolution as a share of VGA (0.5: 320 x 240).")
    ] = 1.0,
    name: Annotated[
        str, typer.Option(help="File name of the frames: NAME.png, ... (NAME_000.png, ... for several).")
    ] = "frame",
    no_cloud: Annotated[bool, typer.Option("--no-cloud", help="Leave out the .npy cloud.")] = False,
    example: ExampleFrameOption = False,
    store: StoreOption = None,
) -> None:
    """Make seeded depth frames of the store's objects resting on a table among distractors, as
    a depth camera sees them (pipeline/data/scenes.py): per frame a 16-bit depth PNG, a JSON file with
    its camera (fx, fy, cx, cy, depth_scale) and the objects' true poses, and the cloud (.npy,
    metres). Try one with `cloudpose detect` or POST /v1/detect.
    """
    with expected_failures():
        from cloudpose.store.package import StoreError, open_store
        from pipeline.data.scenes import Intrinsics, SceneCounts, save_frame
        from pipeline.evaluation import scene_bench
        from pipeline.objects.adding import EXAMPLE_FRAME, record_example_frame

        opened = open_store(store)
        names = [item.strip() for item in objects.split(",") if item.strip()] if objects else opened.names()
        packages = [opened.get(item) for item in names]
        if example:
            if len(names) != 1 or count != 1:
                raise StoreError("--example makes one frame of one object: pass --objects NAME --count 1")
            opened.check_writable(names[0])
            name = EXAMPLE_FRAME
        targets = _scene_targets(packages, named=bool(objects), store=opened)
        intrinsics = Intrinsics().scaled(scale) if scale != 1.0 else Intrinsics()
        frames = scene_bench.scene_frames(
            targets,
            scene_bench.distractor_objects(scene_bench.PRIMITIVE_DISTRACTORS),
            count,
            seed,
            intrinsics,
            empty_fraction=0.0,
            counts=SceneCounts(target_copies=(copies, copies), distractors=(distractors, distractors)),
        )
        about = {"command": "cloudpose " + shlex.join(sys.argv[1:]), "seed": seed}
        stem = None
        for index, frame in enumerate(frames):
            stem = out_dir / (name if count == 1 else f"{name}_{index:03d}")
            written = save_frame(frame, stem, cloud=not no_cloud, about={**about, "frame": index})
            held = ", ".join(
                f"{instance.name} ({instance.visible_fraction:.0%} visible)" for instance in frame.instances
            )
            typer.echo(
                f"wrote {', '.join(str(path) for path in written)}: {intrinsics.width} x "
                f"{intrinsics.height}, {int((frame.depth > 0).sum())} points; {held or 'no object'}"
            )
            if example:
                package = record_example_frame(opened, names[0], written, about["command"])
                stem = package.path / EXAMPLE_FRAME
                typer.echo(f"put it into {package.path} as its example frame")
        camera = " ".join(
            f"-F {key}={value:g}"
            for key, value in (
                ("fx", intrinsics.fx),
                ("fy", intrinsics.fy),
                ("cx", intrinsics.cx),
                ("cy", intrinsics.cy),
                ("depth_scale", intrinsics.depth_scale),
            )
        )
        typer.echo(
            f"try: curl -s -X POST localhost:8000/v1/detect -F depth=@{stem}.png {camera}",
            err=True,
        )


def _mount_exam_commands() -> None:
    from pipeline.exam.cli import exam, lenet_app, plot_app

    app.add_typer(lenet_app, name="lenet")
    app.add_typer(plot_app, name="plot")
    app.command("exam")(exam)


_mount_exam_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
