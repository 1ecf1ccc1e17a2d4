"""A served object: its package's estimator, answering in the mesh file's frame and the cloud's units.

Convention (row vectors). The API's canonical frame is the mesh file's own coordinates, in the
cloud's units. An answer's back transform brings the observed points there::

    canonical = points @ rotation + translation

Inside, the estimator works in the internal frame (file frame shifted so the surface centroid is
at the origin, :mod:`cloudpose.store.package`) and in the object's units: with ``s`` the cloud's units in
object units and ``c`` the centroid (file frame), an internal object pose ``(R, t)``
(``s * points = internal @ R + t``) is the file-frame pose ``(R, (t - c @ R) / s)`` in the cloud's
units. Only this module converts.

``found`` is what a client checks before using a pose: the fit is confident, the cloud is not
degenerate, and no other pose (beyond the object's symmetries) fits it about as well. When
another does, the answer lists the competing poses with their scores.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudpose import budget
from cloudpose.estimation.inference import (
    DISTINCT_DEGREES,
    FULL_SEARCH,
    PLAUSIBLE_SPAN,
    Pose,
    PoseEstimator,
    SearchPlan,
    cloud_span,
    column_pose_matrix,
    quaternion_xyzw,
)
from cloudpose.geometry.resting import RestingPose, resting_poses
from cloudpose.geometry.symmetry import Symmetry
from cloudpose.io.clouds import CloudError, degenerate_reason
from cloudpose.store.package import UNITS_M, ObjectPackage, StoreError, metres_per_unit

if TYPE_CHECKING:
    from cloudpose.settings import Settings

# Unit scales tried for a cloud without declared units whose size does not fit the object.
TRIED_UNITS = ("m", "cm", "mm", "in")
# Without named object units, the ratios between the usual units are tried instead.
TRIED_RATIOS = (1000.0, 100.0, 10.0, 25.4, 2.54, 39.37, 0.1, 0.01, 0.001, 1 / 25.4, 1 / 2.54, 0.0254)
MAX_SCALE_TRIES = 3
# A pose is found when its confidence reaches this, the fit is explained
# (cloudpose.estimation.inference.EXPLAINED_RATIO) and nothing competes with it. Set on the synthetic sets;
# measured on the dragon's real scans (../shared/real): right poses 0.96-0.97, wrong ones 0.3-0.57.
FOUND_CONFIDENCE = 0.5


@dataclass
class ObjectPose:
    """One cloud's answer, in the file's frame and the cloud's units.

    Attributes:
        rotation: (3, 3) back rotation; ``canonical = points @ rotation + translation``.
        translation: (3,) back translation, cloud units.
        object_rotation: (3, 3), ``points = canonical @ object_rotation + object_translation``.
        object_translation: (3,), cloud units.
        found: whether a client may use the pose.
        scale: the cloud's units in object units (1 when they are the object's).
        units: the cloud's unit name, when declared or found.
        ambiguous: not found only because other poses (``candidates``) fit about as well.
    """

    rotation: np.ndarray
    translation: np.ndarray
    object_rotation: np.ndarray
    object_translation: np.ndarray
    found: bool
    scale: float = 1.0
    units: str | None = None
    confidence: dict[str, Any] | None = None
    refined: bool = False
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None
    symmetry: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    ambiguous: bool = False

    def pose_matrix(self) -> np.ndarray:
        """4x4 object pose for column vectors: ``[x_obs; 1] = M @ [x_can; 1]``."""
        return column_pose_matrix(self.object_rotation, self.object_translation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": bool(self.found),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "pose_matrix": self.pose_matrix().tolist(),
            "quaternion_xyzw": quaternion_xyzw(self.object_rotation.T).tolist(),
            "refined": bool(self.refined),
            "confidence": self.confidence,
            "units": self.units,
            "scale": self.scale,
            **({"reason": self.reason} if self.reason else {}),
            **({"symmetry": self.symmetry} if self.symmetry else {}),
            **({"candidates": self.candidates} if self.candidates else {}),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }


# The bench methods of the model card, named for what runs: what /v1/pose answers (the network and
# refinement; for an object without a network, the registration search from point-pair-feature
# votes), and the network without refinement.
SERVED_METHOD = "network+refine"
SEARCH_METHOD = "search+refine"
NETWORK_METHOD = "network"


def served_method(network: bool) -> str:
    """The bench method that measures what ``/v1/pose`` answers for an object with or without a
    network."""
    return SERVED_METHOD if network else SEARCH_METHOD


def model_card(
    bench: dict[str, Any] | None, sidecar: dict[str, Any], measure_with: str, network: bool = True
) -> dict[str, Any]:
    """An object's figures, each labelled with what it measures and when, for ``GET /v1/model``
    and ``GET /v1/objects/NAME``.

    The figures users act on are those of the served answer (network and refinement, from the
    package's ``cloudpose bench --record``); the network alone is shown apart, since its errors
    (tens of degrees on partial views) are only where refinement starts.

    Args:
        bench: the package's recorded bench (``object.json`` ``bench``), or None.
        sidecar: the network's sidecar (``model.json``); without a network, no ``training``.
        measure_with: the command that measures the served figures when none are recorded.
        network: whether the object has a network (else the search alone answers).
    """
    training = sidecar.get("training") or {}
    validation = training.get("validation")
    network_only: dict[str, Any] = {
        "what": "the network alone, without refinement: where refinement starts, not what /v1/pose answers",
        "validation": None,
        "bench": None,
    }
    if validation:
        network_only["validation"] = {
            "what": "the network alone on its validation set, at the end of training",
            "measured": training.get("measured"),
            **validation,
        }
    if not sidecar.get("order_free", True):
        served = {
            "what": "the network alone, as /v1/pose answers: an exam-setting model is not refined",
            "measured": None,
            "command": None,
            "seed": None,
            "sets": None,
            "validation": network_only["validation"],
            "evaluation": sidecar.get("evaluation"),
        }
        return {"served": served, "network_only": network_only}
    how = "network + refinement" if network else "registration search alone (the object has no network)"
    method = served_method(network)
    figures = _bench_figures(bench, method)
    if figures["sets"] is None and not network:
        # Packages benched before the rows were named for what ran call the search network+refine.
        figures = _bench_figures(bench, SERVED_METHOD)
    served = {
        "what": f"{how}, as /v1/pose answers: `cloudpose bench` method {method}, per benchmark set",
        **figures,
    }
    if served["sets"] is None:
        served["note"] = f"not measured yet: `{measure_with}` measures it"
    if bench and any(row.get("method") == NETWORK_METHOD for row in bench.get("rows", [])):
        network_only["bench"] = {
            "what": f"`cloudpose bench` method {NETWORK_METHOD}, per benchmark set",
            **_bench_figures(bench, NETWORK_METHOD),
        }
    return {"served": served, "network_only": network_only}


def _bench_figures(bench: dict[str, Any] | None, method: str) -> dict[str, Any]:
    """When and how a recorded bench was measured, and one method's figures by set (None without)."""
    rows = [row for row in (bench or {}).get("rows", []) if row.get("method") == method]
    return {
        "measured": (bench or {}).get("measured"),
        "command": (bench or {}).get("command"),
        "seed": (bench or {}).get("seed"),
        "sets": {
            row["set"]: {key: value for key, value in row.items() if key not in ("method", "set")}
            for row in rows
        }
        or None,
    }


class ServedObject:
    """One object, ready to answer: a store package, or a bare exported model.

    Args:
        name: the object's name.
        estimator: its network and surface.
        centroid: (3,) the internal frame's origin in the file's frame (zeros for a bare model,
            whose answers stay in the internal frame).
        units / metres_per_unit: the object's units, when declared.
        description: what ``GET /v1/objects`` shows of it.
    """

    def __init__(
        self,
        name: str,
        estimator: PoseEstimator,
        centroid: np.ndarray,
        units: str | None,
        metres_per_unit: float | None,
        description: dict[str, Any],
    ) -> None:
        self.name = name
        self.estimator = estimator
        self.symmetry: Symmetry = estimator.symmetry or Symmetry.identity()
        self.model_id = estimator.model_id
        self.centroid = np.asarray(centroid, dtype=np.float64)
        self.units = units
        self.metres_per_unit = metres_per_unit
        self.description = description
        self.mesh_path: Path | None = None  # the package's mesh (file frame and units), if any
        surface = estimator.surface
        self.diagonal = (
            surface.diagonal
            if surface is not None
            else float(estimator.metadata.get("mesh", {}).get("diagonal", 1.0))
        )

    @classmethod
    def from_package(cls, package: ObjectPackage, threads: int = 1) -> ServedObject:
        estimator = PoseEstimator.for_package(package, threads)
        card = model_card(
            package.meta.get("bench"),
            estimator.metadata,
            f"cloudpose bench --object {package.name} --record",
            network=package.model_path is not None,
        )
        served = cls(
            package.name,
            estimator,
            package.centroid,
            package.units,
            package.metres_per_unit,
            {**package.describe(), "model_id": estimator.model_id, "metrics": card},
        )
        served.mesh_path = package.mesh_path
        return served

    @functools.cached_property
    def resting_poses(self) -> list[RestingPose]:
        """How the object rests on a plane (file frame and units), most probable first; none
        for a bare model, which has no mesh."""
        if self.mesh_path is None:
            return []
        import trimesh

        return resting_poses(trimesh.load(self.mesh_path, force="mesh"))

    @classmethod
    def from_model(cls, model_path: Any, threads: int = 1) -> ServedObject:
        """A bare exported model (``cloudpose export``): poses in its internal frame, no units."""
        estimator = PoseEstimator(model_path, threads)
        name = str(estimator.metadata.get("mesh", {}).get("name", "object")).rsplit(".", 1)[0].lower()
        description = {
            "name": name,
            "units": None,
            "metres_per_unit": None,
            "size": {"diagonal": estimator.metadata["mesh"].get("diagonal")},
            "symmetry": Symmetry.identity().to_dict(),
            "model_id": estimator.model_id,
            "trained": True,
            "bench": None,
            "metrics": model_card(None, estimator.metadata, f"cloudpose bench {model_path}"),
            "frame": "internal: surface centroid at the origin (a bare model knows no file frame)",
        }
        return cls(name, estimator, np.zeros(3), None, None, description)

    def check_cloud(self, points: np.ndarray, where: str = "points") -> None:
        self.estimator.check_cloud(points, where)

    def scale_for(self, units: str | None) -> float:
        """The cloud's units in object units (1 when not declared)."""
        if units is None:
            return 1.0
        try:
            cloud_m = metres_per_unit(units)
        except StoreError as error:
            raise CloudError(422, str(error)) from error
        object_m = self.metres_per_unit
        if object_m is None:
            raise CloudError(
                422,
                f"object {self.name!r} was added without units, so a cloud in {units!r} cannot be "
                "converted: send the points in the object's own units, without 'units'",
            )
        return cloud_m / object_m

    def _scale_tries(self, cloud: np.ndarray) -> list[tuple[float, str | None]]:
        """Scales to try for a cloud of undeclared units whose size does not fit the object."""
        span = cloud_span(cloud)
        object_m = self.metres_per_unit
        if object_m is not None:
            options = [(UNITS_M[name] / object_m, name) for name in TRIED_UNITS]
        else:
            options = [(ratio, None) for ratio in TRIED_RATIOS]
        low, high = PLAUSIBLE_SPAN
        plausible = [
            (scale, name)
            for scale, name in options
            if low * self.diagonal <= span * scale <= high * self.diagonal
        ]
        # Nearest to a typical span (most of a diagonal) first.
        plausible.sort(key=lambda option: abs(math.log(span * option[0] / (0.8 * self.diagonal))))
        return plausible[:MAX_SCALE_TRIES]

    def estimate(
        self,
        clouds: list[np.ndarray],
        refine: bool = True,
        units: str | None = None,
        budgets: Callable[[], budget.Budget | None] | None = None,
        plan: SearchPlan = FULL_SEARCH,
    ) -> list[ObjectPose]:
        """Poses of clouds (each (N, 3), checked with :meth:`check_cloud`), in the cloud's units.

        Args:
            clouds: observed clouds.
            refine: register against the surface after the network (or the search alone).
            units: what the points are in; None tries the usual unit scales when the cloud's
                size does not fit the object.
            budgets: makes each cloud's compute budget (None: no limit). A cloud whose budget
                runs out gets the best pose found so far, marked not found.
            plan: how far the search goes; its starts as answers give poses (file frame,
                the cloud's units), e.g. the ways the object can rest on a plane the cloud was
                cut from.

        Raises:
            budget.TurnedHard: a budget moved a hard cloud's work elsewhere; it carries the
                answers of the clouds before it.
        """
        answers = []
        for cloud in clouds:
            allowance = budgets() if budgets is not None else None
            out_of_time = allowance is not None and allowance.seconds is not None and allowance.seconds <= 0
            if out_of_time and answers:  # a batch whose time is up: the first cloud still gets a look
                answers.append(self._unexamined(allowance))
                continue
            with budget.limited(allowance):
                try:
                    answer = self._estimate_one(cloud, refine, units, plan)
                except budget.TurnedHard as turned:
                    turned.answered = answers
                    raise
            if allowance is not None and allowance.exhausted:
                ran_out = (
                    f"the compute budget ({allowance.nominal_s * 1000:.0f} ms) ran out before the "
                    "search ended"
                )
                answer.warnings.append(ran_out)
                if answer.found:
                    answer.found = False
                    answer.reason = f"{ran_out}: this pose is the best so far, not confirmed"
            answers.append(answer)
        return answers

    def _unexamined(self, allowance: budget.Budget) -> ObjectPose:
        """The answer for a cloud the request's budget left no time to look at."""
        identity = np.eye(3)
        reason = (
            f"the request's compute budget ran out before this cloud was looked at (each cloud gets "
            f"at most {allowance.nominal_s * 1000:.0f} ms, a batch at most its cap): send it again"
        )
        return ObjectPose(identity, np.zeros(3), identity, np.zeros(3), False, reason=reason)

    def _estimate_one(
        self, cloud: np.ndarray, refine: bool, units: str | None, plan: SearchPlan = FULL_SEARCH
    ) -> ObjectPose:
        scale = self.scale_for(units)  # first: unknown units are a 422 whatever the cloud
        reason = degenerate_reason(cloud)
        if reason is not None:
            identity = np.eye(3)
            return ObjectPose(identity, np.zeros(3), identity, np.zeros(3), False, reason=reason)
        unit_name = units if units is not None else self.units
        warnings: list[str] = []
        low, high = PLAUSIBLE_SPAN
        fits = low * self.diagonal <= cloud_span(cloud * scale) <= high * self.diagonal
        tries = [(scale, unit_name)]
        if units is None and not fits and refine:
            # The usual unit scales that make the size fit go first; the object's own goes last.
            tries = [*self._scale_tries(cloud), (scale, unit_name)]
        answer = None
        for tried_scale, tried_name in tries:
            if answer is not None and budget.expired():
                break
            internal = [
                self.internal_pose(rotation, translation, tried_scale)
                for rotation, translation in plan.starts
            ]
            pose = self.estimator.estimate(
                [cloud * tried_scale], refine, dataclasses.replace(plan, starts=internal)
            )[0]
            tried = self._answer(pose, tried_scale, tried_name, refine)
            if answer is None or tried.found or _score(tried) > _score(answer):
                answer = tried
            if tried.found:
                break
        if units is None and not fits and refine:
            if answer.scale != 1.0:
                named = f"in {answer.units}" if answer.units else f"scaled by {answer.scale:.6g}"
                warnings.append(
                    f"the cloud's size does not fit the object's in its own units; it was posed as "
                    f"points {named} (scale {answer.scale:.6g} to the object's units); "
                    "say what the points are in with ?units= to skip the search"
                )
                answer.warnings = warnings + answer.warnings
        return answer

    def _answer(self, pose: Pose, scale: float, units: str | None, refine: bool) -> ObjectPose:
        """The internal pose as a file-frame answer in the cloud's units, with its verdict."""
        refinement = pose.refinement
        rotation, internal_translation = pose.object_rotation, pose.object_translation
        translation = self.answer_translation(rotation, internal_translation, scale)
        back_rotation = rotation.T
        answer = ObjectPose(
            back_rotation,
            -translation @ back_rotation,
            rotation,
            translation,
            found=False,
            scale=scale,
            units=units,
            confidence=None if refinement is None else refinement.summary(),
            refined=bool(refinement is not None and refinement.refined),
            warnings=list(pose.warnings or []),
        )
        if refinement is None and not self.estimator.order_free:
            answer.reason = "exam-setting model: its pose is exact for the template's points, and unchecked"
        elif refinement is None:
            answer.reason = "not refined: without refinement nothing checks the pose (refine=true checks it)"
        elif not refinement.refined:
            answer.reason = "too few points lie near the object's surface in any pose tried"
        elif refinement.confidence < FOUND_CONFIDENCE:
            shown = math.floor(refinement.confidence * 1000) / 1000  # never rounded up to the bar
            answer.reason = (
                f"the best pose explains the cloud poorly (confidence {shown:.3f} < "
                f"{FOUND_CONFIDENCE}): another object, clutter, or other units?"
            )
        elif not refinement.explained:
            answer.reason = (
                f"the best pose leaves the points {refinement.inlier_rmse:.3g} (RMS) from the surface, well "
                f"beyond what their own scatter ({refinement.surface_noise:.3g}) and the object's surface "
                f"tolerance ({refinement.surface_tolerance:.3g}) explain: probably a wrong pose"
            )
        competitors = [
            other
            for other in getattr(refinement, "competitors", []) or []
            if self.symmetry.distinct(other.object_rotation, rotation, DISTINCT_DEGREES)
        ]
        if competitors and answer.reason is None:
            answer.ambiguous = True
            answer.reason = (
                f"{len(competitors)} other pose(s) fit the cloud about as well: the view does not "
                "tell them apart (see candidates)"
            )
        if competitors:
            answer.candidates = [
                self._candidate(item, scale) for item in [refinement, *competitors[:MAX_CANDIDATES]]
            ]
        answer.found = answer.reason is None
        answer.symmetry = self.symmetry_answer(rotation, internal_translation, scale)
        return answer

    def internal_pose(
        self, rotation: np.ndarray, translation: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """An object pose as answers give it (file frame, cloud units; ``scale`` the cloud's units
        in object units) in the estimator's internal frame: an answer's translation is
        ``(internal - centroid @ rotation) / scale``, undone."""
        return rotation, translation * scale + self.centroid @ rotation

    def answer_translation(
        self, rotation: np.ndarray, internal_translation: np.ndarray, scale: float
    ) -> np.ndarray:
        """The translation an answer gives (file frame, cloud units) of an internal object pose:
        :meth:`internal_pose` undone."""
        return (internal_translation - self.centroid @ rotation) / scale

    def posed_surface(
        self, rotation: np.ndarray, translation: np.ndarray, scale: float, points: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """About ``points`` of the object's surface points and their normals, (M, 3) each, at a
        pose as answers give it (file frame, cloud units; ``scale`` the cloud's units in object
        units)."""
        surface = self.estimator.surface
        step = max(1, len(surface.points) // points)
        canonical = (surface.points[::step] + self.centroid) / scale  # file frame, cloud units
        return canonical @ rotation + translation, surface.normals[::step] @ rotation

    def settled(self, answer: ObjectPose, choice: int, why: str) -> ObjectPose:
        """An ambiguous answer settled on one of its candidates by evidence beyond the cloud (e.g.
        a frame's free space), found, with ``why`` among its warnings."""
        candidate = answer.candidates[choice]
        back_rotation = np.asarray(candidate["rotation"], dtype=np.float64)
        back_translation = np.asarray(candidate["translation"], dtype=np.float64)
        rotation = back_rotation.T
        translation = -back_translation @ rotation
        confidence = dict(answer.confidence or {})
        confidence.update({key: candidate[key] for key in ("fitness", "inlier_rmse", "confidence")})
        if candidate["inlier_rmse"] is not None:
            confidence["inlier_rmse_percent"] = round(100.0 * candidate["inlier_rmse"] / self.diagonal, 4)
        _, internal_translation = self.internal_pose(rotation, translation, answer.scale)
        return dataclasses.replace(
            answer,
            rotation=back_rotation,
            translation=back_translation,
            object_rotation=rotation,
            object_translation=translation,
            found=True,
            reason=None,
            ambiguous=False,
            confidence=confidence,
            warnings=[*answer.warnings, why],
            symmetry=self.symmetry_answer(rotation, internal_translation, answer.scale),
        )

    def _candidate(self, refinement: Any, scale: float) -> dict[str, Any]:
        rotation = refinement.object_rotation
        translation = self.answer_translation(rotation, refinement.object_translation, scale)
        return {
            "rotation": rotation.T.tolist(),
            "translation": (-translation @ rotation.T).tolist(),
            "fitness": round(float(refinement.fitness), 4),
            "inlier_rmse": float(refinement.inlier_rmse) if np.isfinite(refinement.inlier_rmse) else None,
            "confidence": round(float(refinement.confidence), 4),
        }

    def symmetry_answer(
        self, rotation: np.ndarray, internal_translation: np.ndarray, scale: float
    ) -> dict[str, Any] | None:
        """The poses equivalent to this one under the object's symmetries, as back transforms."""
        symmetry = self.symmetry
        if symmetry.kind == "none":
            return None
        answer: dict[str, Any] = {"kind": symmetry.kind, "order": symmetry.order}
        equivalent = []
        for turn in symmetry.rotations:
            other = turn @ rotation
            translation = self.answer_translation(other, internal_translation, scale)
            equivalent.append(
                {"rotation": other.T.tolist(), "translation": (-translation @ other.T).tolist()}
            )
        answer["equivalent_poses"] = equivalent
        if symmetry.axis is not None:
            answer["axis"] = symmetry.axis.tolist()
            answer["axis_point"] = (self.centroid / scale).tolist()
            answer["note"] = (
                "any turn about the axis (canonical frame, through axis_point) gives an equally "
                "valid pose; equivalent_poses lists the discrete ones"
            )
        return answer

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


MAX_CANDIDATES = 4


def _score(answer: ObjectPose) -> float:
    return -1.0 if answer.confidence is None else float(answer.confidence["confidence"])


class ObjectRegistry:
    """The served objects by name, and the one ``/v1/pose`` answers for."""

    def __init__(
        self, objects: dict[str, ServedObject], default: str | None, signature: tuple | None = None
    ) -> None:
        self.objects = objects
        self.default = default
        # The store's state when it was loaded (ObjectStore.signature); None for a bare model.
        self.signature = signature

    @classmethod
    def load(cls, settings: Settings) -> ObjectRegistry:
        """Every package of the store (or the one bare model), verified; raises StoreError when
        there is none or one is broken."""
        if settings.model_path is not None:
            served = ServedObject.from_model(settings.model_path, threads=settings.threads)
            return cls({served.name: served}, served.name)
        store = settings.object_store()
        signature = store.signature()  # before reading: a change made meanwhile is seen next time
        names = store.names()
        if not names:
            raise StoreError(
                f"the object store {store} holds no objects: add one with "
                "`cloudpose object add NAME MESH_FILE`, or serve a model with --model"
            )
        objects = {
            name: ServedObject.from_package(store.get(name), threads=settings.threads) for name in names
        }
        default = settings.default_object if settings.default_object in objects else None
        if default is None and len(objects) == 1:
            default = names[0]
        return cls(objects, default, signature)

    def get(self, name: str | None) -> ServedObject:
        """The object of that name (the default for None); 404 with the known names otherwise."""
        known = ", ".join(self.objects)
        if name is None:
            if self.default is None:
                raise CloudError(
                    404,
                    f"no default object is set: use /v1/objects/NAME/pose (known objects: {known}) or "
                    "start the service with CLOUDPOSE_DEFAULT_OBJECT=NAME",
                )
            return self.objects[self.default]
        if name not in self.objects:
            raise CloudError(404, f"unknown object {name!r}; known objects: {known}")
        return self.objects[name]

    def model_ids(self) -> dict[str, str]:
        return {name: served.model_id for name, served in self.objects.items()}
