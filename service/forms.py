"""Reading request bodies: the one multipart reader, and what each kind of route takes from it.

Bodies are read on the event loop (bytes only, no parsing); the decoding into clouds and frames
(:mod:`service.decoding`) is CPU work and runs in a pose worker. Every refusal here is a
:class:`~cloudpose.io.clouds.CloudError` with the status and ``detail`` the API documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cloudpose.io.clouds import CloudError
from cloudpose.settings import Settings
from service.bodies import BodyTooLarge, BodyTooSlow

MULTIPART = "multipart/form-data"
NO_FILE = "multipart body has no file: upload the cloud in a field named 'file'"
MALFORMED = "malformed multipart body"
ONE_FRAME = (
    "send one frame: a cloud file in the multipart field 'file', or a depth image (.png, "
    ".npy) in 'depth' with the fields fx, fy, cx, cy (and depth_scale)"
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its multipart field, its file name ("" when none was sent) and bytes."""

    field: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class Body:
    """A request's body as read: JSON bytes, or multipart uploads and text fields.

    Attributes:
        json: the raw body of a JSON request (None for multipart).
        uploads: the uploaded files, in the order sent.
        texts: the text fields, by name (the last value of a repeated one).
    """

    json: bytes | None = None
    uploads: tuple[Upload, ...] = ()
    texts: dict[str, str] = field(default_factory=dict)


def content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ("" when none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(
    request: Request, max_files: int, max_part_size: int, too_many_files: str | None = None
) -> Body:
    """A multipart body's files and text fields.

    Args:
        request: a ``multipart/form-data`` request.
        max_files: more files than this are refused.
        max_part_size: bytes per part at most.
        too_many_files: the 413 ``detail`` for too many files (None: a malformed body, 400).
    """
    try:
        form = await request.form(max_files=max_files, max_part_size=max_part_size)
    except (BodyTooLarge, BodyTooSlow, ClientDisconnect):
        raise
    except HTTPException as error:  # starlette's 400 for a broken body or a multipart limit
        if too_many_files is not None and str(error.detail).startswith("Too many files"):
            raise CloudError(413, too_many_files) from error
        raise CloudError(400, MALFORMED) from error
    except Exception as error:  # python-multipart raises several types for broken bodies
        raise CloudError(400, MALFORMED) from error
    uploads = []
    last: dict[str, object] = {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            value = Upload(key, value.filename or "", await value.read())
            uploads.append(value)
        last[key] = value
    return Body(
        uploads=tuple(uploads), texts={key: value for key, value in last.items() if isinstance(value, str)}
    )


async def read_clouds(request: Request, settings: Settings, batch: bool) -> Body:
    """A pose request's body: JSON, or cloud files in the fields ``file`` (or ``files``)."""
    kind = content_type(request)
    if kind == MULTIPART:
        form = await read_form(
            request,
            settings.max_batch,
            settings.max_body_bytes,
            too_many_files=f"too many clouds: more files than limit {settings.max_batch}",
        )
        uploads = tuple(upload for upload in form.uploads if upload.field in ("file", "files"))
        if not uploads:
            raise CloudError(422, NO_FILE)
        if not batch and len(uploads) > 1:
            raise CloudError(422, "send one file to /v1/pose, or several to /v1/pose/batch")
        if len(uploads) > settings.max_batch:
            raise CloudError(413, f"too many clouds: {len(uploads)} > limit {settings.max_batch}")
        return Body(uploads=uploads)
    if kind not in ("application/json", ""):
        raise CloudError(
            415, f"unsupported content type {kind!r}; send application/json or multipart/form-data"
        )
    return Body(json=await request.body())


async def read_frame(request: Request, settings: Settings) -> Body:
    """A frame request's body: JSON, or one cloud file in ``file`` or one depth image in
    ``depth`` (its intrinsics and any other text fields in ``texts``)."""
    if content_type(request) != MULTIPART:
        return await read_clouds(request, settings, batch=False)
    form = await read_form(request, 2, settings.max_body_bytes)
    files = {upload.field: upload for upload in form.uploads}  # a repeated field: its last file
    if set(files) - {"file", "depth"} or len(files) != 1:
        raise CloudError(422, ONE_FRAME)
    return Body(uploads=tuple(files.values()), texts=form.texts)


async def read_cloud_file(request: Request, settings: Settings) -> Upload:
    """The one cloud file of a multipart body's field ``file`` (the viewer's reads)."""
    if content_type(request) != MULTIPART:
        raise CloudError(415, "send the cloud file as multipart/form-data in the field 'file'")
    form = await read_form(request, 1, settings.max_body_bytes)
    if "file" in form.texts or not form.uploads or form.uploads[-1].field != "file":
        raise CloudError(422, NO_FILE)
    return form.uploads[-1]
