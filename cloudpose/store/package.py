"""The object store and its package format, read by the pipeline and the service alike.

A store is a folder of object packages, one sub-folder per object::

    STORE/NAME/
        object.json     the package descriptor (format ``cloudpose-object/1``, below)
        surface.npy     (M, 6) surface points and outward normals, internal frame, object units
        mesh.EXT        the mesh file as the user gave it (its frame is the API's canonical frame)
        model.onnx      optional order-free network; without it the registration search answers
        model.json      the network's sidecar (format ``cloudpose-model/1``), when there is one
        example.json, example.xyz   a posed cloud and its true answer, to try by hand
        example_frame.png, .json, .npy   optional: a depth frame holding the object, its camera
                        and true poses (``object.json`` ``example_frame`` names them and the
                        command that made them); read by people, never by the service
        PROVENANCE.md   how the package was made: command, seed, bench figures

Files other than the descriptor, the surface and the network are not hashed: nothing served
depends on them.

Where stores are. The shipped objects (the bunny) live in ``data/objects`` of the repository
(:data:`SHIPPED_STORE`) and are read-only; the user's own objects live in the user store,
``CLOUDPOSE_STORE`` when set, else ``objects`` in the user's data folder
(:func:`user_store_path`). By default the commands and the service work on both together
(:class:`LayeredStore`): the shipped objects with the user's beside them, writes and removals in
the user's. A folder given explicitly (``--store DIR``) is used alone (:func:`open_store`).

Frames. Users see the mesh file's own coordinates ("canonical" in the API: a robot's grasp
points are defined there). Internally the surface, the network and the refinement work in the
file's frame shifted so that the surface centroid is at the origin; ``mesh.centroid`` (file
frame) is that shift, and only :mod:`cloudpose.estimation.served` converts between the two.

Units. ``units.name`` is what the file's numbers are in (``mm``, ``m``, ... or None when the
user did not say) and ``units.metres_per_unit`` its size in metres (None when unknown).

This module owns the format: nobody else parses ``object.json`` or ``model.json``. Writes are
atomic: a package is assembled in a temporary folder beside its final place and renamed into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OBJECT_FORMAT = "cloudpose-object/1"
MODEL_FORMAT = "cloudpose-model/1"
DESCRIPTOR = "object.json"
# The objects that ship with cloudpose (the bunny), wherever the caller runs.
SHIPPED_STORE = Path(__file__).resolve().parents[2] / "data" / "objects"
# Names the user's store (read when a store is opened, never at import).
STORE_VARIABLE = "CLOUDPOSE_STORE"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Metres per unit of the unit names a user may declare or a request may name.
UNITS_M = {"um": 1e-6, "mm": 1e-3, "cm": 1e-2, "dm": 0.1, "m": 1.0, "in": 0.0254, "ft": 0.3048}
# Sidecar fields the service reads from an exported network (GET /v1/model describes it).
MODEL_REQUIRED = ("model_id", "kind", "n_points", "convention", "units", "mesh", "template")
OBJECT_REQUIRED = ("name", "units", "mesh", "surface", "symmetry", "tuning")


class StoreError(ValueError):
    """A package or store that cannot be read or written as asked; the message says why."""


def check_name(name: str) -> str:
    """An object name: lower-case letters, digits, ``-`` and ``_``, at most 63 characters."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise StoreError(
            f"invalid object name {name!r}: use lower-case letters, digits, '-' and '_' "
            "(starting with a letter or digit, at most 63 characters)"
        )
    return name


def metres_per_unit(units: str) -> float:
    """Metres per unit of a unit name (``mm``, ``cm``, ``m``, ``in``, ...)."""
    key = units.strip().lower()
    if key not in UNITS_M:
        raise StoreError(f"unknown unit {units!r}; use one of {', '.join(UNITS_M)}")
    return UNITS_M[key]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_descriptor(
    path: Path, format_name: str, required: tuple[str, ...], label: str = ""
) -> dict[str, Any]:
    """A JSON descriptor of the given format holding the required fields; ``label`` names it in
    the error messages."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{label}{path} is not valid JSON") from error
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise StoreError(f"{label}{path} is not a {format_name} file")
    missing = [key for key in required if key not in meta]
    if missing:
        raise StoreError(f"{label}{path} lacks {', '.join(missing)}")
    return meta


def read_model_sidecar(model_path: str | Path) -> tuple[dict[str, Any], bytes]:
    """An exported network's sidecar (``model.json`` beside ``model.onnx``) and the model's bytes.

    Checks the format, the fields the service needs, and the ONNX file's hash.

    Raises:
        StoreError: missing files, a sidecar that is not a cloudpose model, or a hash mismatch.
    """
    model_path = Path(model_path)
    sidecar_path = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise StoreError(f"model file not found: {model_path}")
    if not sidecar_path.is_file():
        raise StoreError(f"model sidecar not found: {sidecar_path} (export writes it beside the model)")
    metadata = _read_descriptor(sidecar_path, MODEL_FORMAT, MODEL_REQUIRED, "model sidecar ")
    model_bytes = model_path.read_bytes()
    if hashlib.sha256(model_bytes).hexdigest() != metadata.get("onnx_sha256"):
        raise StoreError(f"{model_path} does not match the hash in {sidecar_path.name}")
    return metadata, model_bytes


def record_in_model_sidecar(model_path: str | Path, key: str, value: Any) -> Path:
    """Set one field of an exported network's sidecar (after checking it), written atomically."""
    metadata, _ = read_model_sidecar(model_path)
    metadata[key] = value
    sidecar_path = Path(model_path).with_suffix(".json")
    staging = sidecar_path.with_name(f".{sidecar_path.name}.tmp")
    staging.write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(staging, sidecar_path)
    return sidecar_path


@dataclass
class ObjectPackage:
    """One object of the store, as its descriptor describes it.

    Attributes:
        path: the package folder.
        meta: the parsed ``object.json``.
    """

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def units(self) -> str | None:
        return self.meta["units"].get("name")

    @property
    def metres_per_unit(self) -> float | None:
        value = self.meta["units"].get("metres_per_unit")
        return None if value is None else float(value)

    @property
    def centroid(self) -> np.ndarray:
        """(3,) the internal frame's origin in the file's coordinates."""
        return np.asarray(self.meta["mesh"]["centroid"], dtype=np.float64)

    @property
    def diagonal(self) -> float:
        return float(self.meta["mesh"]["diagonal"])

    @property
    def surface_path(self) -> Path:
        return self.path / self.meta["surface"]["file"]

    @property
    def mesh_path(self) -> Path:
        """The package's copy of the mesh file, as the user gave it."""
        return self.path / self.meta["mesh"]["file"]

    @property
    def model_path(self) -> Path | None:
        model = self.meta.get("model")
        return None if not model else self.path / model["file"]

    @property
    def tuning(self) -> dict[str, float]:
        return dict(self.meta["tuning"])

    @property
    def surface_tolerance(self) -> float | None:
        """How far the real object's surface may lie from the mesh (file units), when the package
        says (packages made before it was measured do not: the service's default applies)."""
        value = self.meta["tuning"].get("surface_tolerance")
        return None if value is None else float(value)

    def surface(self) -> np.ndarray:
        """(M, 6) surface points and normals (internal frame), checked against the hash."""
        if sha256_file(self.surface_path) != self.meta["surface"].get("sha256"):
            raise StoreError(f"{self.surface_path} does not match the hash in {DESCRIPTOR}")
        try:
            array = np.load(self.surface_path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise StoreError(f"surface {self.surface_path} is corrupt") from error
        if array.ndim != 2 or array.shape[1] != 6:
            raise StoreError(f"surface {self.surface_path} must have shape (M, 6), got {array.shape}")
        return array

    def describe(self) -> dict[str, Any]:
        """Public summary for ``GET /v1/objects``."""
        meta = self.meta
        model = meta.get("model") or {}
        mesh = meta["mesh"]
        return {
            "name": self.name,
            "units": self.units,
            "metres_per_unit": self.metres_per_unit,
            "size": {
                "extent": mesh["extent"],
                "diagonal": mesh["diagonal"],
                "diameter": mesh.get("diameter"),
                "centroid": mesh["centroid"],
            },
            "mesh": {key: mesh.get(key) for key in ("source", "sha256", "faces", "vertices", "watertight")},
            "symmetry": meta["symmetry"],
            "model_id": model.get("model_id"),
            "trained": bool(model),
            "bench": meta.get("bench"),
        }


def read_package(path: str | Path) -> ObjectPackage:
    """Read and check a package folder's descriptor (the files it names must exist).

    Raises:
        StoreError: a missing or malformed descriptor, or a file it names that is missing.
    """
    path = Path(path)
    descriptor = path / DESCRIPTOR
    if not descriptor.is_file():
        raise StoreError(f"{path} is not an object package: {DESCRIPTOR} is missing")
    meta = _read_descriptor(descriptor, OBJECT_FORMAT, OBJECT_REQUIRED)
    package = ObjectPackage(path, meta)
    if not package.surface_path.is_file():
        raise StoreError(f"{package.surface_path} is missing")
    if package.model_path is not None and not package.model_path.is_file():
        raise StoreError(f"{package.model_path} is missing")
    return package


def write_package(root: str | Path, name: str, meta: dict[str, Any], files: dict[str, bytes]) -> Path:
    """Write a package atomically: assembled beside its place, then renamed into it.

    An existing package of that name is replaced only once the new one is complete, so a reader
    sees the old package or the new one, never a mix.

    Args:
        root: the store folder.
        name: the object's name.
        meta: the descriptor (``format`` and ``name`` are filled in).
        files: file name -> bytes, written into the package beside ``object.json``.
    """
    check_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": OBJECT_FORMAT, **meta, "name": name}
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; a package is read by the service user too
    try:
        for file_name, data in files.items():
            (staging / file_name).write_bytes(data)
        (staging / DESCRIPTOR).write_text(json.dumps(meta, indent=2) + "\n")
        read_package(staging)  # the package must read back before it replaces anything
        target = root / name
        retired = None
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.replace(target, retired / name)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return target


class ObjectStore:
    """The packages under one folder.

    Args:
        root: the store folder (need not exist yet).
    """

    def __init__(self, root: str | Path = SHIPPED_STORE) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        """Names of the packages in the store, sorted (folders without a descriptor are skipped)."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and (entry / DESCRIPTOR).is_file()
        )

    def __contains__(self, name: str) -> bool:
        return (
            isinstance(name, str)
            and bool(NAME_PATTERN.fullmatch(name))
            and (self.root / name / DESCRIPTOR).is_file()
        )

    def get(self, name: str) -> ObjectPackage:
        check_name(name)  # a name never reaches outside the store
        if name not in self:
            known = ", ".join(self.names()) or "none"
            raise StoreError(f"no object {name!r} in {self.root} (known: {known})")
        return read_package(self.root / name)

    def packages(self) -> list[ObjectPackage]:
        return [self.get(name) for name in self.names()]

    def write(self, name: str, meta: dict[str, Any], files: dict[str, bytes]) -> ObjectPackage:
        return read_package(write_package(self.root, name, meta, files))

    def check_writable(self, name: str) -> None:
        """Raise StoreError when a package of this name may not be written here."""
        check_name(name)

    def remove(self, name: str) -> None:
        """Delete a package: renamed away first, so no reader sees half of it."""
        package = self.get(name)
        retired = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=self.root))
        os.replace(package.path, retired / name)
        shutil.rmtree(retired, ignore_errors=True)

    def signature(self) -> tuple:
        """What changes whenever a package is added, replaced or removed (packages are renamed
        into place, so a replaced descriptor is a new file): the names with their descriptors'
        inode, size and modification time. Cheap: one listing and one ``stat`` per package."""
        return _signature(self.root)

    def __str__(self) -> str:
        return str(self.root)


def _signature(root: Path) -> tuple:
    stamps = []
    for name in ObjectStore(root).names():
        try:
            stat = (root / name / DESCRIPTOR).stat()
        except OSError:  # removed between the listing and the stat: the next look sees it gone
            continue
        stamps.append((name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return (str(root), *stamps)


def user_store_path() -> Path:
    """The user's store: ``CLOUDPOSE_STORE`` when set, else ``objects`` in the user's data folder
    (``~/.local/share/cloudpose/objects`` on Linux; platformdirs' ``user_data_path``). Read when
    called."""
    value = os.environ.get(STORE_VARIABLE, "").strip()
    if value:
        return Path(value).expanduser()
    import platformdirs

    return platformdirs.user_data_path("cloudpose") / "objects"


class LayeredStore(ObjectStore):
    """The shipped objects, read-only, with the user's store beside them: what the commands and
    the service use when no store is named.

    Names are the union of both. A user package of a shipped object's name shadows it (``object
    add`` refuses such a name, so only a package copied in by hand, or an object a later release
    ships under a name the user already took, gets there). Writes and removals go to the user
    store; a shipped object cannot be removed, nor replaced unless a user package shadows it.

    Args:
        user: the user store (:func:`user_store_path` when None).
        shipped: the shipped store.
    """

    def __init__(self, user: str | Path | None = None, shipped: str | Path = SHIPPED_STORE) -> None:
        super().__init__(user if user is not None else user_store_path())
        self.shipped = ObjectStore(shipped)
        self.user = ObjectStore(self.root)

    def names(self) -> list[str]:
        return sorted(set(self.shipped.names()) | set(self.user.names()))

    def __contains__(self, name: str) -> bool:
        return name in self.user or name in self.shipped

    def is_shipped(self, name: str) -> bool:
        """Whether the object of this name is the shipped one (no user package shadows it)."""
        return name in self.shipped and name not in self.user

    def get(self, name: str) -> ObjectPackage:
        check_name(name)
        if name in self.user:
            return self.user.get(name)
        if name in self.shipped:
            return self.shipped.get(name)
        known = ", ".join(self.names()) or "none"
        raise StoreError(f"no object {name!r} in {self} (known: {known})")

    def check_writable(self, name: str) -> None:
        check_name(name)
        if self.is_shipped(name):
            raise StoreError(
                f"object {name!r} ships with cloudpose ({self.shipped.root}) and is read-only: add "
                "yours under another name, or name a store of your own with --store DIR"
            )

    def write(self, name: str, meta: dict[str, Any], files: dict[str, bytes]) -> ObjectPackage:
        self.check_writable(name)
        return self.user.write(name, meta, files)

    def remove(self, name: str) -> None:
        if self.is_shipped(name):
            raise StoreError(
                f"object {name!r} ships with cloudpose ({self.shipped.root}) and cannot be removed; "
                f"your objects are in {self.user.root}"
            )
        self.user.remove(name)

    def signature(self) -> tuple:
        return (_signature(self.shipped.root), _signature(self.user.root))

    def __str__(self) -> str:
        return f"{self.shipped.root} (shipped) + {self.user.root}"


def open_store(store: str | Path | None = None) -> ObjectStore:
    """The store a command or the service works on: exactly ``store`` when given, else the
    shipped objects with the user's store beside them (:class:`LayeredStore`)."""
    return ObjectStore(store) if store is not None else LayeredStore()
