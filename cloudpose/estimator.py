"""The service's answers without a server: :class:`Estimator` serves an object store in this process.

It reads and checks clouds with the functions the HTTP routes use (:mod:`cloudpose.io.clouds`), poses
them with the same objects (:class:`cloudpose.estimation.served.ServedObject`), and answers with the
dataclasses the HTTP client gives (:mod:`cloudpose.results`), so code written against
:class:`cloudpose.client.Client` runs unchanged on an :class:`Estimator`, and the same cloud gets the
same answer. Refusals raise the client's typed errors (:class:`~cloudpose.results.InvalidCloud`,
:class:`~cloudpose.results.NotFound`) with the status and ``detail`` the HTTP route answers with.

Example::

    from cloudpose import Estimator

    estimator = Estimator.from_store()  # the shipped objects (data/objects) and the user's
    result = estimator.pose("data/objects/bunny/example.xyz", object="bunny")
    print(result.found, result.rotation, result.translation)

Unlike the service, no compute budget applies unless ``budget_s`` is given: every cloud is
searched to the end.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_settings import BaseSettings

from cloudpose.budget import Budget
from cloudpose.estimation.answers import pose_answer
from cloudpose.estimation.served import ObjectPose, ObjectRegistry, ServedObject
from cloudpose.io.clouds import CloudError, as_cloud, read_cloud_file, read_frame_file
from cloudpose.results import (
    BatchResult,
    DetectResult,
    ObjectInfo,
    ObjectList,
    PoseResult,
    TrackResult,
    error_for,
)
from cloudpose.settings import Settings
from cloudpose.store.package import SHIPPED_STORE  # noqa: F401  (where the shipped objects are)

INTRINSIC_FIELDS = ("fx", "fy", "cx", "cy", "depth_scale")


@contextmanager
def typed_errors() -> Iterator[None]:
    """The route's refusal (a :class:`CloudError`) as the client's typed error of its status."""
    try:
        yield
    except CloudError as error:
        raise error_for(error.status, error.detail) from error


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


class ArgumentSettings(Settings):
    """The service's settings from arguments and defaults alone: an estimator in a program reads
    no ``CLOUDPOSE_*`` variables (they configure the server), but for where the user's objects are
    (``CLOUDPOSE_STORE``, read when a default store is opened, as every command reads it)."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, **other_sources: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)


class Estimator:
    """Poses of clouds of an object store's objects, computed here, answered as ``/v1/pose`` does.

    Build one with :meth:`from_store` (or :meth:`from_model` for a bare exported model); loading
    takes a second or two per object, so keep it and reuse it. Methods may be called from several
    threads at once.

    Args:
        registry: the loaded objects.
        settings: the limits (``max_points``, ``max_batch``, ``max_frame_points``,
            ``detect_budget_s``) the HTTP routes would apply.
    """

    def __init__(self, registry: ObjectRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    @classmethod
    def from_store(
        cls,
        store: str | os.PathLike | None = None,
        default_object: str | None = None,
        threads: int = 1,
        **limits: Any,
    ) -> Estimator:
        """Every package of an object store, verified, as ``cloudpose serve`` loads it.

        Args:
            store: the store's folder, used alone (as ``cloudpose serve --store``); by default
                the shipped objects (the bunny) and the user's store (``CLOUDPOSE_STORE``, else
                the user's data folder: where ``cloudpose object add`` puts objects).
            default_object: the object :meth:`pose` answers for without ``object`` (default: the
                service's default, or the only object).
            threads: onnxruntime intra-op threads per object.
            limits: other :class:`cloudpose.settings.Settings` fields, e.g. ``max_points``.

        Raises:
            cloudpose.store.package.StoreError: no store there, or a broken package.
        """
        options: dict[str, Any] = {"store": Path(store) if store is not None else None}
        if default_object is not None:
            options["default_object"] = default_object
        settings = ArgumentSettings(**{**limits, **options, "threads": threads})
        return cls(ObjectRegistry.load(settings), settings)

    @classmethod
    def from_model(cls, model_path: str | os.PathLike, threads: int = 1, **limits: Any) -> Estimator:
        """A bare exported model (``cloudpose export``), as ``cloudpose serve --model`` serves it."""
        settings = ArgumentSettings(**{**limits, "model_path": Path(model_path), "threads": threads})
        return cls(ObjectRegistry.load(settings), settings)

    def _served(self, name: str | None) -> ServedObject:
        with typed_errors():
            return self.registry.get(name)

    @property
    def default(self) -> str | None:
        """The object :meth:`pose` answers for without ``object``."""
        return self.registry.default

    def objects(self) -> ObjectList:
        """Every object, as ``GET /v1/objects`` lists them."""
        return ObjectList(
            tuple(ObjectInfo.from_json(served.describe()) for served in self.registry.objects.values()),
            self.registry.default,
        )

    def object(self, name: str) -> ObjectInfo:
        """One object, as ``GET /v1/objects/{name}`` describes it (NotFound for an unknown name)."""
        return ObjectInfo.from_json(self._served(name).describe())

    def _cloud(self, cloud: Any, where: str) -> tuple[np.ndarray, str | None]:
        """A cloud, read and checked as the routes read one, and its file name (None for arrays)."""
        if _is_path(cloud):
            path = Path(cloud)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise CloudError(422, f"cannot read {str(path)!r}: {error.strerror}") from error
            return read_cloud_file(path.name, data, self.settings.max_points), path.name
        if not isinstance(cloud, (np.ndarray, list)):
            try:
                cloud = list(cloud)
            except TypeError:
                raise CloudError(422, f"{where} must be a list of [x, y, z] triples") from None
        return as_cloud(cloud, self.settings.max_points, where=where), None

    def _budgets(self, budget_s: float | None) -> Callable[[], Budget] | None:
        return None if budget_s is None else (lambda: Budget(budget_s))

    def _poses(
        self,
        served: ServedObject,
        clouds: list[tuple[np.ndarray, str | None]],
        units: str | None,
        refine: bool,
        budget_s: float | None,
        started: float,
        batch: bool,
    ) -> dict[str, Any]:
        """The clouds posed, answered as the pose routes answer (:func:`pose_answer`)."""
        points = [cloud for cloud, _ in clouds]
        poses: list[ObjectPose] = served.estimate(points, refine, units, budgets=self._budgets(budget_s))
        return pose_answer(served, poses, points, [name for _, name in clouds], started, batch)

    def pose(
        self,
        cloud: Any,
        object: str | None = None,
        units: str | None = None,
        refine: bool = True,
        budget_s: float | None = None,
    ) -> PoseResult:
        """The pose of one cloud, as ``POST /v1/pose`` (or ``/v1/objects/{object}/pose``) answers.

        Args:
            cloud: (N, 3) array or list of [x, y, z] rows, or a cloud file's path (.ply, .pcd,
                .xyz, .npy...).
            object: the object's name (default: :attr:`default`).
            units: what the points are in; the translation comes back in them. None: the
                object's units, or a scale that fits.
            refine: register against the surface after the network.
            budget_s: stop the search after this many seconds (the best pose so far, not found).

        Returns:
            The same result the HTTP client returns for the same cloud; check ``found``.

        Raises:
            InvalidCloud: a cloud the route would refuse (422, 413, 415), with its ``detail``
                (e.g. ``"points has 10 points; send at least 32 points of the object"``).
            NotFound: an unknown object.
        """
        started = time.perf_counter()
        served = self._served(object)
        with typed_errors():
            points, name = self._cloud(cloud, "points")
            served.check_cloud(points, where="points")
            answer = self._poses(served, [(points, name)], units, refine, budget_s, started, batch=False)
        return PoseResult.from_json(answer)

    def pose_batch(
        self,
        clouds: Sequence[Any],
        object: str | None = None,
        units: str | None = None,
        refine: bool = True,
        budget_s: float | None = None,
    ) -> BatchResult:
        """Poses of several clouds of one object, in their order (``POST /v1/pose/batch``).

        Args:
            clouds: each as :meth:`pose` takes one; a path's result names its file.
            object: as :meth:`pose`.
            units: as :meth:`pose`.
            refine: as :meth:`pose`.
            budget_s: each cloud's search time at most.

        Raises:
            InvalidCloud: any cloud the route would refuse (its detail names ``clouds[i]``), or
                more clouds than ``max_batch``.
        """
        started = time.perf_counter()
        served = self._served(object)
        with typed_errors():
            clouds = list(clouds)
            if not clouds:
                raise CloudError(422, "give at least one cloud")
            if len(clouds) > self.settings.max_batch:
                raise CloudError(413, f"too many clouds: {len(clouds)} > limit {self.settings.max_batch}")
            read = [self._cloud(cloud, f"clouds[{index}].points") for index, cloud in enumerate(clouds)]
            for index, (points, _) in enumerate(read):
                served.check_cloud(points, where=f"clouds[{index}]")
            answer = self._poses(served, read, units, refine, budget_s, started, batch=True)
        # In process each result carries its object, model id and time, as a single pose's does.
        common = {key: answer[key] for key in ("object", "model_id", "server_time_ms")}
        return BatchResult.from_json({**answer, "poses": [{**pose, **common} for pose in answer["poses"]]})

    def detect(
        self,
        frame: Any = None,
        *,
        depth: Any = None,
        intrinsics: Any = None,
        objects: Sequence[str] | str | None = None,
        units: str | None = None,
        max_instances: int | None = None,
        viewpoint: Sequence[float] | None = None,
    ) -> DetectResult:
        """Every instance of the objects in a whole sensor frame, as ``POST /v1/detect`` answers.

        Args:
            frame: the frame's points in the sensor's frame: (N, 3), an organized (H, W, 3) array
                with NaN rows for missing returns, or a cloud file's path.
            depth: instead, a depth image: (H, W) array (integers: raw units times
                ``depth_scale``; floats: metres) or a 16-bit .png / .npy path, with ``intrinsics``.
            intrinsics: ``fx``, ``fy``, ``cx``, ``cy`` (and ``depth_scale``), a mapping or an object
                with those attributes (e.g. :class:`cloudpose.io.frames.Intrinsics`).
            objects: the objects to look for (default: every one).
            units: what a frame's points are in (default metres).
            max_instances: at most this many detections.
            viewpoint: (3,) where the sensor was, when the points are not in its frame.
        """
        from cloudpose.detection.detect import detect

        started = time.perf_counter()
        if isinstance(objects, str):
            objects = [objects]
        names = list(self.registry.objects) if objects is None else [name.strip() for name in objects]
        chosen = {name: self._served(name) for name in names if name}
        with typed_errors():
            if not chosen:
                raise CloudError(422, "objects names no object: give names, or leave it out")
            points, seen_from = self._frame(frame, depth, intrinsics, units, viewpoint)
            report = detect(
                points, chosen, units or "m", seen_from, max_instances, budget_s=self.settings.detect_budget_s
            )
        return DetectResult.from_json(
            {
                **report.answer(len(points), self.settings.detect_budget_s),
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    def _frame(
        self, frame: Any, depth: Any, intrinsics: Any, units: str | None, viewpoint: Sequence[float] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A frame's points (N, 3) and viewpoint, checked as the frame routes check them."""
        from cloudpose.io.frames import depth_frame_points

        limit = self.settings.max_frame_points
        if (frame is None) == (depth is None):
            raise CloudError(422, "give one frame: a cloud (frame=...) or a depth image (depth=...)")
        if depth is not None:
            if units not in (None, "m"):
                raise CloudError(
                    422,
                    "a depth image gives points in metres (depth_scale sets its raw unit): leave out units",
                )
            name, data = self._depth_bytes(depth)
            points = depth_frame_points(name, data, _intrinsic_fields(intrinsics), limit)
        elif _is_path(frame):
            path = Path(frame)
            points = read_frame_file(path.name, path.read_bytes(), limit)
        elif isinstance(frame, np.ndarray):
            # As the client uploads it: a frame .npy, whose NaN rows are missing returns.
            points = read_frame_file("frame.npy", _npy(frame), limit)
        else:
            points = as_cloud(frame if isinstance(frame, list) else list(frame), limit)
        seen_from = None if viewpoint is None else as_cloud([list(viewpoint)], 1, where="viewpoint")[0]
        return points, seen_from

    def track(
        self,
        frame: Any = None,
        *,
        previous: Sequence[Any],
        depth: Any = None,
        intrinsics: Any = None,
        units: str | None = None,
        viewpoint: Sequence[float] | None = None,
    ) -> TrackResult:
        """The instances of the frame before followed into this one, as ``POST /v1/track`` answers.

        Args:
            frame: this frame, as :meth:`detect` takes it.
            depth: as :meth:`detect` takes it.
            intrinsics: as :meth:`detect` takes them.
            units: as :meth:`detect` takes them.
            viewpoint: as :meth:`detect` takes it.
            previous: the poses to follow, most trusted first: detections (a
                :class:`DetectResult`'s ``detections``), the last answer's tracks, or mappings with
                ``object``, ``rotation`` (3, 3) and ``translation`` (3,), as answers give them.

        Returns:
            One :class:`~cloudpose.results.Track` per previous pose, in their order.
        """
        from cloudpose.client import previous_pose_json
        from cloudpose.detection.track import PreviousPose, track

        started = time.perf_counter()
        with typed_errors():
            points, seen_from = self._frame(frame, depth, intrinsics, units, viewpoint)
            try:
                items = [previous_pose_json(item) for item in previous]
            except (KeyError, TypeError, ValueError) as error:
                raise CloudError(422, f"previous: {error}") from None
            objects = {name: self._served(name) for name in {item["object"] for item in items} if name}
            poses = PreviousPose.parse(items, objects)
            report = track(points, objects, poses, units or "m", seen_from)
        return TrackResult.from_json(
            {
                "tracks": report.answers(poses),
                "lost": report.lost,
                "n_points": int(len(points)),
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    @staticmethod
    def _depth_bytes(depth: Any) -> tuple[str, bytes]:
        if _is_path(depth):
            path = Path(depth)
            return path.name, path.read_bytes()
        return "depth.npy", _npy(np.asarray(depth))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _intrinsic_fields(intrinsics: Any) -> dict[str, str]:
    """A camera as the route's form fields (strings), for the route's own checks."""
    if intrinsics is None:
        return {}
    if isinstance(intrinsics, Mapping):
        values = {name: intrinsics.get(name) for name in INTRINSIC_FIELDS}
    else:
        values = {name: getattr(intrinsics, name, None) for name in INTRINSIC_FIELDS}
    return {name: repr(float(value)) for name, value in values.items() if value is not None}
