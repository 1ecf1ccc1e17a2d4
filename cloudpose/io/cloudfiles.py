"""Reading uploaded cloud files without trusting what they say.

Formats: .npy / .npz (numpy), .ply (plyfile), .pcd (pypcd4), .las / .laz (laspy, lazrs), .e57
(pye57), and text tables (.xyz, .txt, .csv). :data:`READERS` maps each suffix to its reader.

A file's header says how much data follows. Each reader here:

1. checks the sizes the header declares against the service's limits (``max_points``,
   :data:`MAX_DECODED_BYTES`) before it allocates anything, so a 400-byte file that declares a
   billion points costs nothing;
2. checks that the data present matches the header exactly: no missing or extra rows, no
   truncated or padded binary (one exception: the slack real writers such as PCL leave after a
   PCD's binary_compressed block, which PCL ignores, is ignored here too);
3. lets the format's library parse it (numpy's ``.npy`` reader and ``loadtxt``, ``pypcd4``,
   ``laspy``, ``pye57``; for PLY, ``plyfile`` parses the header and numpy reads the vertex block
   by the dtype plyfile gives, as plyfile's own memory-mapped path does), and checks the parsed
   count once more.

Readers return the x, y, z columns as an (N, 3) numeric array; :func:`cloudpose.io.clouds.read_cloud_file`
then validates the numbers. Every refusal raises :class:`BadCloudFile`, whose ``problem`` reads
after the file's name ("'scan.pcd' declares 1000000000 points; ...").
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# PLY and PCD headers are a few hundred bytes; a "header" longer than this is not one.
MAX_HEADER_BYTES = 64 * 1024
# What a compressed payload (an .npz member, a PCD binary_compressed block) may expand to: the
# default request body limit, ten times what 250,000 float64 points need. A zip bomb's
# declared size is refused before anything is decompressed.
MAX_DECODED_BYTES = 64 * 1024 * 1024
# An .npz holds a handful of arrays; a zip directory beyond these is refused unread.
MAX_ARCHIVE_MEMBERS = 16
MAX_ARCHIVE_DIRECTORY_BYTES = 64 * 1024
# A text row of a cloud (x y z and a few attributes) takes well under 200 bytes. Text parsers
# expand a line about tenfold while splitting it, so one 64 MB "line" would cost a gigabyte.
MAX_LINE_BYTES = 4096
# numpy refuses .npy headers over 10,000 bytes (``max_header_size``); this covers any it reads.
NPY_HEADER_PEEK = 16 * 1024

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
ZIP_END = b"PK\x05\x06"
ZIP64_END_LOCATOR = b"PK\x06\x07"
PICKLE_PROTOCOL_MARK = b"\x80"


class BadCloudFile(Exception):
    """An uploaded file that holds no usable cloud.

    Attributes:
        status: the HTTP status to answer with (413 too large, 422 unusable).
        problem: what is wrong, phrased to follow the file's name.
        member: the archive member at fault, for .npz files.
    """

    def __init__(self, status: int, problem: str, member: str | None = None) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem
        self.member = member


def _too_many_points(declared: int, max_points: int, what: str = "points") -> BadCloudFile:
    return BadCloudFile(413, f"declares {declared} {what}; this service accepts at most {max_points} points")


def _count_lines(data: bytes, start: int) -> int:
    """Lines of text in ``data[start:]``, trailing blank lines not counted."""
    end = max(start, len(data.rstrip()))
    return 0 if end == start else data.count(b"\n", start, end) + 1


def _check_line_lengths(data: bytes, start: int) -> None:
    """Refuse text from ``start`` on that has a line longer than :data:`MAX_LINE_BYTES`.

    Scanned a megabyte at a time, so the newline positions of a file of blank lines never
    take more than a few megabytes.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    chunk = 1024 * 1024
    line_start = start
    for offset in range(start, len(data), chunk):
        newlines = np.flatnonzero(buffer[offset : offset + chunk] == ord("\n")) + offset
        if newlines.size:
            if max(newlines[0] - line_start, int(np.diff(newlines).max(initial=0)) - 1) > MAX_LINE_BYTES:
                break
            line_start = int(newlines[-1]) + 1
        if min(offset + chunk, len(data)) - line_start > MAX_LINE_BYTES:
            break
    else:
        return
    raise BadCloudFile(
        422, f"has a line longer than {MAX_LINE_BYTES} bytes; a text cloud holds one point per line"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _bytes_follow(count: int) -> str:
    return "1 byte follows" if count == 1 else f"{count} bytes follow"


# ---------------------------------------------------------------------------------------------
# .npy and .npz


def read_npy(data: bytes, max_points: int) -> np.ndarray:
    """An .npy array, or the one array of a zip archive (``numpy.savez``), as x, y, z columns.

    Returns:
        (N, 3) numbers for a plain array; other shapes and dtypes are returned as they are, for
        :func:`cloudpose.io.clouds.as_cloud` to refuse with its messages.
    """
    if data.startswith(ZIP_MAGICS):
        return _read_npz(data, max_points)
    header_length, data_bytes, shape, dtype = _npy_header(data, max_points)
    _check_npy_length(len(data) - header_length, data_bytes, shape, dtype)
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    return _npy_points(array, shape)


def _npy_header(head: bytes, max_points: int) -> tuple[int, int, tuple[int, ...], np.dtype]:
    """Check an .npy header (``head`` holds at least the header) against the limits.

    Returns:
        The header's length in bytes, the data bytes it declares, the shape and the dtype.
    """
    if not head.startswith(NPY_MAGIC):
        if head.startswith(PICKLE_PROTOCOL_MARK):
            raise BadCloudFile(
                422,
                "is a Python pickle, not an .npy array: cloudpose never unpickles uploads; "
                "save the points with numpy.save",
            )
        raise BadCloudFile(
            422, "is not an .npy file: it does not start with NumPy's magic bytes (save it with numpy.save)"
        )
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise BadCloudFile(
                422,
                f"is an .npy file of format version {version[0]}.{version[1]}, which cloudpose does not "
                "read; save a plain numeric array with numpy.save (format 1.0)",
            )
    except (ValueError, SyntaxError, TypeError) as error:
        raise BadCloudFile(422, "has a corrupt .npy header: the file is damaged or not an .npy") from error
    if dtype.hasobject:
        raise BadCloudFile(
            422,
            f"holds Python objects (dtype {dtype}), which only unpickling could read: cloudpose never "
            "unpickles uploads; save a numeric (N, 3) array",
        )
    if any(size < 0 for size in shape):
        raise BadCloudFile(422, f"has a corrupt .npy header: negative shape {shape}")
    data_bytes = math.prod(shape) * dtype.itemsize
    declared_points = None
    if dtype.names is None and len(shape) == 2 and shape[1] == 3:
        declared_points = shape[0]
    elif dtype.names is not None and len(shape) == 1:
        declared_points = shape[0]
    if declared_points is not None and declared_points > max_points:
        raise _too_many_points(declared_points, max_points)
    if data_bytes > MAX_DECODED_BYTES:
        raise BadCloudFile(
            413,
            f"declares a {shape} array of {dtype} ({data_bytes} bytes); this service reads at most "
            f"{MAX_DECODED_BYTES} bytes of array data",
        )
    return stream.tell(), data_bytes, shape, dtype


def _check_npy_length(present: int, declared: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if present < declared:
        raise BadCloudFile(
            422,
            f"is truncated: its header declares a {shape} array of {dtype} ({declared} bytes) "
            f"but {_bytes_follow(present)}",
        )
    if present > declared:
        raise BadCloudFile(
            422,
            f"has {_plural(present - declared, 'byte')} after the {shape} array of {dtype} its header "
            "declares: the file is corrupt",
        )


def _npy_points(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape != shape:  # numpy's reader agrees with the header it was checked against
        raise BadCloudFile(422, f"holds an array of shape {array.shape}, not the {shape} its header declares")
    names = array.dtype.names
    if names is None:
        return array
    fields = array.dtype.fields
    usable = all(
        axis in names and fields[axis][0].kind in "fiu" and fields[axis][0].shape == () for axis in "xyz"
    )
    if not usable or array.ndim != 1:
        raise BadCloudFile(
            422,
            f"holds a structured array with fields ({', '.join(names)}) and shape {array.shape}; send "
            "numeric fields x, y and z in a 1-D array, or a plain (N, 3) array",
        )
    return np.stack([array["x"], array["y"], array["z"]], axis=1)


def _check_zip_directory(data: bytes) -> None:
    """Refuse archives whose directory is too large to read, before zipfile reads it."""
    end = data.rfind(ZIP_END, max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or len(data) - end < 22:
        raise BadCloudFile(
            422, "is a zip archive without its central directory: the file is truncated or corrupt"
        )
    _, _, _, _, entries, directory_bytes, directory_offset, _ = struct.unpack(
        "<4s4H2LH", data[end : end + 22]
    )
    if data[max(0, end - 20) : end - 16] == ZIP64_END_LOCATOR or directory_offset == 0xFFFFFFFF:
        raise BadCloudFile(
            422, "is a zip64 archive; cloudpose reads .npz files of numpy.savez up to a few arrays"
        )
    if entries > MAX_ARCHIVE_MEMBERS or directory_bytes > MAX_ARCHIVE_DIRECTORY_BYTES:
        raise BadCloudFile(
            422,
            f"is a zip archive of {entries} entries ({directory_bytes} directory bytes); cloudpose reads "
            f"archives of at most {MAX_ARCHIVE_MEMBERS} arrays: send the points as one array",
        )


def _read_npz(data: bytes, max_points: int) -> np.ndarray:
    """The one array of an .npz (or the one named ``points``), decompressed no further than declared."""
    _check_zip_directory(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        names = [info.filename for info in members]
        if not members:
            raise BadCloudFile(422, "is an empty zip archive: it holds no array")
        if len(members) > 1:
            if "points.npy" not in names:
                raise BadCloudFile(
                    422,
                    f"is an archive of {len(members)} arrays ({', '.join(names)}); send one array, or "
                    "name the points 'points' (numpy.savez(file, points=...))",
                )
            members = [members[names.index("points.npy")]]
        (info,) = members
        if info.file_size > MAX_DECODED_BYTES + NPY_HEADER_PEEK:
            raise BadCloudFile(
                413,
                f"expands to {info.file_size} bytes; this service reads at most {MAX_DECODED_BYTES} "
                "bytes of array data",
                member=info.filename,
            )
        try:
            with archive.open(info) as member:
                head = member.read(NPY_HEADER_PEEK)
                header_length, data_bytes, shape, dtype = _npy_header(head, max_points)
                needed = header_length + data_bytes
                # One byte more than declared tells a member with extra data from an exact one,
                # and nothing beyond that is ever decompressed.
                missing = needed + 1 - len(head)
                raw = head + member.read(missing) if missing > 0 else head
        except BadCloudFile as error:
            error.member = info.filename
            raise
    if len(raw) > needed:  # how much more is unknown: it was never decompressed
        raise BadCloudFile(
            422,
            f"has more data after the {shape} array of {dtype} its header declares: the file is corrupt",
            member=info.filename,
        )
    try:
        _check_npy_length(len(raw) - header_length, data_bytes, shape, dtype)
    except BadCloudFile as error:
        error.member = info.filename
        raise
    array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    return _npy_points(array, shape)


# ---------------------------------------------------------------------------------------------
# .ply

PLY_START = (b"ply\n", b"ply\r\n")
PLY_END_HEADER = re.compile(rb"\nend_header[ \t]*\r?\n")


def read_ply(data: bytes, max_points: int) -> np.ndarray:
    """The vertices of an ASCII or binary (little or big endian) PLY file; faces are counted, not read."""
    import plyfile

    if not data.startswith(PLY_START):
        raise BadCloudFile(422, "is not a PLY file: it does not start with the line 'ply'")
    end = PLY_END_HEADER.search(data, 0, MAX_HEADER_BYTES)
    if end is None:
        raise BadCloudFile(
            422,
            f"has no 'end_header' line in its first {MAX_HEADER_BYTES} bytes: not a PLY file, or its "
            "header is cut short",
        )
    header_length = end.end()
    try:
        header = data[:header_length].decode("ascii")
    except UnicodeDecodeError as error:
        raise BadCloudFile(422, "has a PLY header that is not ASCII text: the file is corrupt") from error
    # plyfile reads the header with every count set to 0, so it allocates nothing; the counts
    # are checked here first. They are read as plyfile reads them (int() of the third word).
    counts = []
    lines = header.splitlines()
    for index, line in enumerate(lines):
        words = line.split()
        if len(words) != 3 or words[0] != "element":
            continue
        try:
            count = int(words[2])
        except ValueError:
            continue  # plyfile refuses it below
        if count < 0:
            raise BadCloudFile(422, f"declares {count} {words[1]} elements: the header is corrupt")
        counts.append(count)
        lines[index] = f"element {words[1]} 0"
    try:
        ply = plyfile.PlyData.read(io.BytesIO(("\n".join(lines) + "\n").encode("ascii")))
    except plyfile.PlyParseError as error:
        raise BadCloudFile(422, f"has a malformed PLY header ({error})") from error
    elements = list(ply.elements)
    if len(elements) != len(counts):  # an element line plyfile read that the loop above did not
        raise BadCloudFile(422, "has a malformed PLY header (an element line without a count)")
    names = [element.name for element in elements]
    if "vertex" not in names:
        raise BadCloudFile(422, f"has no vertex element (its elements: {', '.join(names) or 'none'})")
    if names[0] != "vertex":
        raise BadCloudFile(
            422,
            f"lists '{names[0]}' before its vertices; cloudpose reads PLY files whose first element "
            "is 'vertex'",
        )
    vertex = elements[0]
    properties = [prop.name for prop in vertex.properties]
    if any(isinstance(prop, plyfile.PlyListProperty) for prop in vertex.properties):
        raise BadCloudFile(422, "has a list property among its vertex properties; vertices must be scalars")
    if not {"x", "y", "z"} <= set(properties):
        raise BadCloudFile(
            422, f"has no x, y and z vertex properties (it has {', '.join(properties) or 'none'})"
        )
    vertices = counts[0]
    if vertices > max_points:
        raise _too_many_points(vertices, max_points, "vertices")
    if ply.text:
        rows = _ply_ascii_rows(data, header_length, elements, counts, len(properties))
        columns = [properties.index(axis) for axis in "xyz"]
        points = rows[:, columns]
    else:
        vertex_dtype = vertex.dtype(ply.byte_order)
        _check_ply_binary_length(data, header_length, elements, counts, ply.byte_order)
        points = np.frombuffer(data, dtype=vertex_dtype, count=vertices, offset=header_length)
        points = np.stack([points["x"], points["y"], points["z"]], axis=1)
    if points.shape[0] != vertices:
        raise BadCloudFile(422, f"declares {vertices} vertices but {points.shape[0]} were read")
    return points


def _describe_counts(elements: list, counts: list[int]) -> str:
    return ", ".join(
        f"element {element.name} {count}" for element, count in zip(elements, counts, strict=True)
    )


def _ply_ascii_rows(
    data: bytes, header_length: int, elements: list, counts: list[int], columns: int
) -> np.ndarray:
    """The vertex rows of an ASCII PLY, (N, columns), after checking every element's row count."""
    _check_line_lengths(data, header_length)
    lines = _count_lines(data, header_length)
    declared = sum(counts)
    if lines != declared:
        raise BadCloudFile(
            422,
            f"declares {declared} rows of data ({_describe_counts(elements, counts)}) but holds "
            f"{_plural(lines, 'line')}: the file is truncated or its header is wrong",
        )
    if counts[0] == 0:
        return np.empty((0, columns))
    header_lines = data.count(b"\n", 0, header_length)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(
                io.BytesIO(data),
                dtype=np.float64,
                skiprows=header_lines,
                max_rows=counts[0],
                comments=None,
                ndmin=2,
            )
    except ValueError as error:
        raise BadCloudFile(
            422, f"has a vertex line that is not {columns} numbers (its header declares {columns} properties)"
        ) from error
    if rows.shape != (counts[0], columns):
        raise BadCloudFile(
            422,
            f"has vertex rows of shape {rows.shape[1:]} where its header declares {columns} properties "
            f"for {counts[0]} vertices",
        )
    return rows


def _check_ply_binary_length(
    data: bytes, header_length: int, elements: list, counts: list[int], byte_order: str
) -> None:
    """The data after the header must hold every element, and nothing more.

    Rows with list properties (a mesh's faces) vary in size. When every row's lists are as long
    as the first row's (triangles, say), the element is checked exactly; otherwise only for the
    bytes its rows take at least, and the end of the file is then not checked.
    """
    offset, least, exact = header_length, 0, True
    for element, count in zip(elements, counts, strict=True):
        if count == 0:
            continue
        layout = _first_row_layout(element, data, offset, byte_order) if exact else None
        if layout is not None:
            row, lists = layout
            size = count * row.itemsize
            # Rows that fit, all as long as the first: uniform lists, or a file cut short.
            fitting = min(count, max(0, len(data) - offset) // max(row.itemsize, 1))
            if not lists or _lists_uniform(data, offset, row, fitting, lists):
                offset += size
                continue
        exact = False
        least += count * _least_row_bytes(element, byte_order)
    declared = offset - header_length + least
    present = len(data) - header_length
    described = _describe_counts(elements, counts)
    if present < declared:
        at_least = "" if exact else "at least "
        raise BadCloudFile(
            422,
            f"is truncated: its header declares {at_least}{declared} bytes of data ({described}) but "
            f"{_bytes_follow(present)}",
        )
    if exact and present > declared:
        raise BadCloudFile(
            422,
            f"has {_plural(present - declared, 'byte')} after the {declared} bytes of data its header "
            f"declares ({described}): the file is corrupt",
        )


def _first_row_layout(element, data: bytes, offset: int, byte_order: str) -> tuple[np.dtype, list] | None:
    """The element's row dtype with every list as long as in the row at ``offset``, and the
    (length field, list length) of each list; None when that row's lengths are not in ``data``."""
    import plyfile

    fields, lists, position = [], [], offset
    for index, prop in enumerate(element.properties):
        if isinstance(prop, plyfile.PlyListProperty):
            length_dtype, value_dtype = (np.dtype(code) for code in prop.list_dtype(byte_order))
            if position + length_dtype.itemsize > len(data):
                return None
            length = int(np.frombuffer(data, length_dtype, 1, position)[0])
            if length < 0:
                return None
            lists.append((f"length{index}", length))
            fields += [(f"length{index}", length_dtype), (f"values{index}", value_dtype, (length,))]
            position += length_dtype.itemsize + length * value_dtype.itemsize
        else:
            fields.append((f"value{index}", np.dtype(prop.dtype(byte_order))))
            position += fields[-1][1].itemsize
    return np.dtype(fields), lists


def _lists_uniform(data: bytes, offset: int, row: np.dtype, count: int, lists: list) -> bool:
    rows = np.frombuffer(data, row, count, offset)
    return all((rows[name] == length).all() for name, length in lists)


def _least_row_bytes(element, byte_order: str) -> int:
    import plyfile

    return sum(
        np.dtype(prop.list_dtype(byte_order)[0]).itemsize
        if isinstance(prop, plyfile.PlyListProperty)
        else np.dtype(prop.dtype(byte_order)).itemsize
        for prop in element.properties
    )


# ---------------------------------------------------------------------------------------------
# .pcd

PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
PCD_TYPES = {
    ("F", 4),
    ("F", 8),
    ("U", 1),
    ("U", 2),
    ("U", 4),
    ("U", 8),
    ("I", 1),
    ("I", 2),
    ("I", 4),
    ("I", 8),
}
PCD_ENCODINGS = ("ascii", "binary", "binary_compressed")


def read_pcd(data: bytes, max_points: int) -> np.ndarray:
    """The x, y, z fields of an ASCII, binary or binary_compressed PCD file (v0.7)."""
    from pypcd4 import PointCloud
    from pypcd4.pypcd4 import MetaData

    header_length, header = _pcd_header(data)
    metadata = _pcd_metadata(header, max_points)
    points = metadata["points"]
    row_bytes = sum(size * count for size, count in zip(metadata["size"], metadata["count"], strict=True))
    declared = points * row_bytes
    if declared > MAX_DECODED_BYTES:
        raise BadCloudFile(
            413,
            f"declares {points} points of {row_bytes} bytes ({declared} bytes); this service reads at "
            f"most {MAX_DECODED_BYTES} bytes of point data",
        )
    encoding = metadata["data"]
    present = len(data) - header_length
    if encoding == "ascii":
        _check_line_lengths(data, header_length)
        lines = _count_lines(data, header_length)
        if lines != points:
            raise BadCloudFile(
                422,
                f"declares {points} points but holds {_plural(lines, 'line')} of data: the file is "
                "truncated or its header is wrong",
            )
    elif encoding == "binary":
        if present != declared:
            raise BadCloudFile(
                422,
                f"declares {points} points of {row_bytes} bytes ({declared} bytes) but "
                f"{_bytes_follow(present)} its header: the file is "
                f"{'truncated' if present < declared else 'corrupt'}",
            )
    else:
        if present < 8:
            raise BadCloudFile(422, "is truncated: its binary_compressed data has no size prefix")
        compressed, uncompressed = struct.unpack("<II", data[header_length : header_length + 8])
        if uncompressed != declared:
            raise BadCloudFile(
                422,
                f"says its compressed data expands to {uncompressed} bytes, but its header declares "
                f"{points} points of {row_bytes} bytes ({declared} bytes): the file is corrupt",
            )
        if compressed > present - 8:
            raise BadCloudFile(
                422,
                f"says its compressed data is {compressed} bytes, but {_bytes_follow(present - 8)}: the "
                "file is truncated",
            )
        # Bytes after the compressed block are slack that real writers leave (PCL's own files
        # end in a few kilobytes of zeros) and PCL's reader ignores: never read, never
        # decompressed, and bounded by the body limit like the rest of the upload.
        data = data[: header_length + 8 + compressed]
    if points == 0:
        return np.empty((0, 3))
    # pypcd4 parses a header it writes itself, from the checked fields, followed by the checked data.
    clean = MetaData(**metadata).compose_header().encode("ascii")
    try:
        cloud = PointCloud.from_fileobj(io.BytesIO(clean + data[header_length:]))
    except ValueError as error:
        if encoding != "ascii":
            raise
        values = sum(metadata["count"])
        raise BadCloudFile(
            422,
            f"has a data line that is not {values} numbers separated by single spaces (its header "
            f"declares {values} values per point)",
        ) from error
    if cloud.pc_data.shape[0] != points:
        raise BadCloudFile(422, f"declares {points} points but {cloud.pc_data.shape[0]} were read")
    return np.stack([cloud.pc_data["x"], cloud.pc_data["y"], cloud.pc_data["z"]], axis=1)


def _pcd_header(data: bytes) -> tuple[int, dict[str, list[str]]]:
    """The header's length and its lines by keyword, up to and including DATA."""
    header: dict[str, list[str]] = {}
    start = 0
    while "DATA" not in header:
        end = data.find(b"\n", start, MAX_HEADER_BYTES)
        if end < 0:
            raise BadCloudFile(
                422,
                f"has no DATA line in its first {MAX_HEADER_BYTES} bytes: not a PCD file, or its "
                "header is cut short",
            )
        try:
            line = data[start:end].decode("ascii").strip()
        except UnicodeDecodeError as error:
            raise BadCloudFile(422, "is not a PCD file: its header is not ASCII text") from error
        start = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        if key.upper() not in PCD_KEYS:
            raise BadCloudFile(
                422, f"is not a PCD file: {key[:20]!r} is not a PCD header keyword ({', '.join(PCD_KEYS)})"
            )
        if key.upper() in header:
            raise BadCloudFile(422, f"has two {key.upper()} lines in its header: the header is corrupt")
        header[key.upper()] = values
    return start, header


def _pcd_metadata(header: dict[str, list[str]], max_points: int) -> dict:
    """The header's fields checked against each other and against ``max_points``."""
    missing = [key for key in ("FIELDS", "SIZE", "TYPE") if key not in header]
    if missing:
        raise BadCloudFile(422, f"has no {' or '.join(missing)} line in its PCD header")
    fields = header["FIELDS"]
    types = [value.upper() for value in header["TYPE"]]
    try:
        sizes = [int(value) for value in header["SIZE"]]
        counts = [int(value) for value in header["COUNT"]] if "COUNT" in header else [1] * len(fields)
        width = _one_int(header, "WIDTH", None)
        height = _one_int(header, "HEIGHT", 1)
        points = _one_int(header, "POINTS", None if width is None else width * height)
    except ValueError as error:
        raise BadCloudFile(
            422, f"has a PCD header with a value that is not a whole number ({error})"
        ) from error
    if width is None or points is None:
        raise BadCloudFile(422, "has no WIDTH line in its PCD header")
    if not (len(fields) == len(sizes) == len(types) == len(counts)) or not fields:
        raise BadCloudFile(
            422,
            f"lists {len(fields)} FIELDS, {len(sizes)} SIZE, {len(types)} TYPE and {len(counts)} COUNT "
            "values in its PCD header: one of each per field",
        )
    for field, type_, size, count in zip(fields, types, sizes, counts, strict=True):
        if (type_, size) not in PCD_TYPES:
            raise BadCloudFile(
                422, f"gives field {field!r} TYPE {type_} and SIZE {size}, which PCD does not define"
            )
        if count < 1:
            raise BadCloudFile(422, f"gives field {field!r} COUNT {count}: the header is corrupt")
    for axis in "xyz":
        if axis not in fields:
            raise BadCloudFile(422, f"has no {axis} field (its FIELDS: {' '.join(fields)})")
        if counts[fields.index(axis)] != 1:
            raise BadCloudFile(
                422, f"gives field {axis!r} COUNT {counts[fields.index(axis)]}; x, y and z need 1"
            )
    if min(width, height, points) < 0:
        raise BadCloudFile(422, "declares a negative WIDTH, HEIGHT or POINTS: the header is corrupt")
    if points > max_points:
        raise _too_many_points(points, max_points)
    if points != width * height:
        raise BadCloudFile(
            422, f"declares POINTS {points} but WIDTH x HEIGHT = {width} x {height}: the header is corrupt"
        )
    encoding = header["DATA"][0].lower() if header["DATA"] else ""
    if encoding not in PCD_ENCODINGS:
        raise BadCloudFile(
            422, f"has DATA {encoding or '(none)'!r}; PCD data is one of {', '.join(PCD_ENCODINGS)}"
        )
    return {
        "fields": tuple(fields),
        "size": tuple(sizes),
        "type": tuple(types),
        "count": tuple(counts),
        "points": points,
        "width": width,
        "height": height,
        "data": encoding,
    }


def _one_int(header: dict[str, list[str]], key: str, default: int | None) -> int | None:
    if key not in header:
        return default
    if len(header[key]) != 1:
        raise ValueError(f"{key} {' '.join(header[key])}")
    return int(header[key][0])


# ---------------------------------------------------------------------------------------------
# Text tables: .xyz, .txt, .csv

# What a text table's reader says the file holds, by suffix.
TEXT_KINDS = {".xyz": "an .xyz file", ".txt": "a .txt file", ".csv": "a .csv file"}
# The sniffer looks at this many data lines (and never more than MAX_HEADER_BYTES of them).
SNIFF_LINES = 20
TEXT_DELIMITERS = ",;\t "
# Header names of the coordinate columns: "x", "X", "//X" (CloudCompare), "x [m]", "x_mm", '"x"'.
AXIS_NAME = re.compile(r"^([xyz])(?:[\s_\[(].*)?$")
# numpy's loadtxt names the value it could not read, its data row (from 0) and column (from 1).
NOT_A_NUMBER = re.compile(r"could not convert string '(.*)' to float64 at row (\d+), column (\d+)")


def read_text(data: bytes, max_points: int, suffix: str = ".xyz") -> np.ndarray:
    """A table of numbers, one point per line: ``x y z [more values]``.

    Values may be separated by commas, semicolons, tabs or runs of spaces (the standard library's
    :class:`csv.Sniffer` tells which). A first line that is not all numbers is a header: its
    columns named x, y and z are the coordinates; without a header they are the first three
    columns. Lines starting with ``#`` are comments, and extra columns are ignored.
    """
    kind = TEXT_KINDS.get(suffix, TEXT_KINDS[".xyz"])
    _check_line_lengths(data, 0)
    sample = _text_sample(data, kind)
    header_line, first = _first_content_line(sample)
    delimiter, decimal_comma = _sniff_delimiter(sample)
    columns, skip_rows = (0, 1, 2), 0
    if first is not None:
        fields = _split(first, delimiter)
        # Empty fields (a trailing separator, "1,2,3,") are not words, so not a header's.
        if not all(_is_number(field, decimal_comma) for field in fields if field):
            columns = _header_columns(fields, kind, data_follows=_has_data_after(sample, header_line))
            skip_rows = header_line + 1
    # One row more than the limit tells an oversized file without reading all of it, and only
    # the x, y, z columns are kept, so neither many lines nor wide ones cost more than the limit.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # loadtxt warns on a file with no data rows
            rows = np.loadtxt(
                io.BytesIO(data),
                delimiter=None if delimiter in (" ", "\t") else delimiter,
                comments="#",
                skiprows=skip_rows,
                usecols=columns,
                max_rows=max_points + 1,
                ndmin=2,
                encoding="utf-8-sig",
                quotechar='"',
                converters=(lambda value: float(value.replace(",", "."))) if decimal_comma else None,
            )
    except ValueError as error:
        if isinstance(error, UnicodeDecodeError):
            raise BadCloudFile(422, f"is not UTF-8 text: {kind} holds lines of 'x y z'") from error
        not_number = NOT_A_NUMBER.match(str(error))
        if not_number:
            value, row, column = not_number.groups()
            raise BadCloudFile(
                422,
                f"has {value[:20]!r} where a number should be (data row {int(row) + 1}, column {column}): "
                f"{kind} holds one point per line, in numbers",
            ) from error
        values = None if first is None or skip_rows else len(_split(first, delimiter))
        if values is not None and values < 3:
            raise BadCloudFile(
                422, f"has {values} numbers on a line; {kind} needs 3 per line (x y z)"
            ) from error
        raise
    if rows.shape[0] > max_points:
        raise BadCloudFile(
            413, f"has more than {max_points} points; this service accepts at most {max_points}"
        )
    return rows


def _text_sample(data: bytes, kind: str) -> list[str]:
    """The file's first lines (at most :data:`MAX_HEADER_BYTES`), decoded; comments kept, so
    that line numbers count as ``loadtxt``'s ``skiprows`` counts them."""
    head = data[:MAX_HEADER_BYTES]
    cut = head.rfind(b"\n") + 1 if len(data) > MAX_HEADER_BYTES else len(head)
    try:
        text = head[:cut].decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadCloudFile(422, f"is not UTF-8 text: {kind} holds lines of 'x y z'") from error
    return text.split("\n")  # as loadtxt splits lines, so that indices match its skiprows


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _first_content_line(sample: list[str]) -> tuple[int, str | None]:
    """The index and text (comments cut) of the first line that is neither blank nor a comment."""
    for index, line in enumerate(sample):
        if _is_content(line):
            return index, line.split("#", 1)[0]
    return len(sample), None


def _has_data_after(sample: list[str], index: int) -> bool:
    return any(_is_content(line) for line in sample[index + 1 :])


def _sniff_delimiter(sample: list[str]) -> tuple[str, bool]:
    """The delimiter of the sample's content lines, and whether ``,`` is their decimal mark."""
    lines = [line.split("#", 1)[0].strip() for line in sample if _is_content(line)][:SNIFF_LINES]
    if not lines:
        return " ", False
    try:
        delimiter = csv.Sniffer().sniff("\n".join(lines), delimiters=TEXT_DELIMITERS).delimiter
    except csv.Error:
        # Rows of different lengths, or spaces in runs of different lengths: the first line's
        # separator, else whitespace.
        delimiter = next((mark for mark in ",;\t" if mark in lines[0]), " ")
    # "1,5;2,5;3,5" (a spreadsheet's export with decimal commas) sniffs as comma-separated, yet
    # a semicolon is never part of a number.
    data_lines = lines[1:] or lines
    if delimiter == "," and all(";" in line for line in data_lines):
        delimiter = ";"
    return delimiter, delimiter == ";" and any("," in line for line in data_lines)


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter in (" ", "\t"):
        return line.split()
    return [field.strip().strip('"').strip() for field in line.strip().split(delimiter)]


def _is_number(field: str, decimal_comma: bool) -> bool:
    try:
        float(field.replace(",", ".") if decimal_comma else field)
    except ValueError:
        return False
    return True


def _header_columns(fields: list[str], kind: str, data_follows: bool) -> tuple[int, int, int]:
    """The x, y, z column indices a header line names."""
    names = [field.strip().strip('"').lstrip("/#").strip().lower() for field in fields]
    found: dict[str, list[int]] = {axis: [] for axis in "xyz"}
    for index, name in enumerate(names):
        match = AXIS_NAME.match(name)
        if match:
            found[match.group(1)].append(index)
    exact = {axis: [index for index in found[axis] if names[index] == axis] for axis in "xyz"}
    chosen = {axis: (exact[axis] or found[axis]) for axis in "xyz"}
    if all(len(indices) == 1 for indices in chosen.values()):
        return chosen["x"][0], chosen["y"][0], chosen["z"][0]
    if not data_follows:
        # A line of words and nothing else: not a table at all (the general message says so).
        raise ValueError("a text file without a numeric row")
    shown = ", ".join(field[:20] for field in fields[:8]) + (", ..." if len(fields) > 8 else "")
    problems = []
    missing = [axis for axis in "xyz" if not chosen[axis]]
    if missing:
        problems.append("no column named " + " or ".join(missing))
    repeated = [axis for axis in "xyz" if len(chosen[axis]) > 1]
    if repeated:
        problems.append("more than one column named " + " or ".join(repeated))
    raise BadCloudFile(
        422,
        f"has a header line ({shown}) with {' and '.join(problems)}: name the coordinate columns x, y "
        f"and z, or leave the header out ({kind} then takes the first three columns)",
    )


# ---------------------------------------------------------------------------------------------
# .las and .laz

LAS_SIGNATURE = b"LASF"


def read_las(data: bytes, max_points: int) -> np.ndarray:
    """The scaled x, y, z of an ASPRS LAS file, or of its compressed form LAZ (``laspy``, with
    ``lazrs`` for LAZ)."""
    if not data.startswith(LAS_SIGNATURE):
        raise BadCloudFile(422, "is not a LAS or LAZ file: it does not start with 'LASF'")
    try:
        import laspy
    except ImportError as error:
        raise BadCloudFile(
            415, "is a LAS file and this service has no LAS reader: install laspy[lazrs]"
        ) from error
    try:
        reader = laspy.open(io.BytesIO(data))
    except Exception as error:  # laspy raises several types for a damaged header or VLR block
        raise BadCloudFile(
            422, "has a LAS header that laspy cannot read: the file is truncated or corrupt"
        ) from error
    with reader:
        header = reader.header
        points, row_bytes = int(header.point_count), int(header.point_format.size)
        if points > max_points:
            raise _too_many_points(points, max_points)
        declared = points * row_bytes
        if declared > MAX_DECODED_BYTES:
            raise BadCloudFile(
                413,
                f"declares {points} points of {row_bytes} bytes ({declared} bytes); this service reads "
                f"at most {MAX_DECODED_BYTES} bytes of point data",
            )
        compressed = header.are_points_compressed
        present = len(data) - int(header.offset_to_point_data)
        # Extended VLRs may follow the points, so only a file too short for them is refused.
        if not compressed and present < declared:
            raise BadCloudFile(
                422,
                f"is truncated: its header declares {points} points of {row_bytes} bytes ({declared} "
                f"bytes) but {_bytes_follow(max(present, 0))} its header",
            )
        try:
            record = reader.read_points(points)
        except laspy.errors.LaspyException as error:
            if compressed and "backend" in str(error).lower():
                raise BadCloudFile(
                    415,
                    "is compressed (LAZ) and this service has no LAZ decompressor: install laspy[lazrs]",
                ) from error
            raise BadCloudFile(
                422, "has points that laspy cannot read: the file is truncated or corrupt"
            ) from error
        except Exception as error:  # lazrs raises its own error type on a cut or damaged stream
            if not compressed:
                raise
            raise BadCloudFile(
                422, "is compressed (LAZ) but its points do not decompress: the file is truncated or corrupt"
            ) from error
    if len(record) != points:
        raise BadCloudFile(422, f"declares {points} points but {len(record)} were read")
    # The scaled coordinates (integer * scale + offset), as float64.
    return np.stack([np.asarray(record.x), np.asarray(record.y), np.asarray(record.z)], axis=1)


# ---------------------------------------------------------------------------------------------
# .e57

E57_SIGNATURE = b"ASTM-E57"
E57_HEADER = struct.Struct("<8sIIQQQQ")  # signature, version, physical length, XML offset and length, page
E57_BYTES_PER_POINT = 3 * 8 + 1  # x, y, z as float64 and the invalid-state flag, as pye57 reads them


def read_e57(data: bytes, max_points: int) -> np.ndarray:
    """The cartesian points of every scan of an ASTM E57 file (``pye57``), each scan moved by its
    pose into the file's common frame, and points flagged invalid left out."""
    if not data.startswith(E57_SIGNATURE) or len(data) < E57_HEADER.size:
        raise BadCloudFile(422, "is not an E57 file: it does not start with 'ASTM-E57'")
    _, major, _, physical_length, _, _, _ = E57_HEADER.unpack_from(data)
    if physical_length != len(data):
        raise BadCloudFile(
            422,
            f"is {_plural(len(data), 'byte')} long but its header declares {physical_length}: the "
            f"file is {'truncated' if len(data) < physical_length else 'corrupt'}",
        )
    if major != 1:
        raise BadCloudFile(422, f"is an E57 file of format version {major}; cloudpose reads version 1")
    try:
        import pye57
    except ImportError as error:
        raise BadCloudFile(415, "is an E57 file and this service has no E57 reader: install pye57") from error
    # libE57 reads files by path only.
    with tempfile.TemporaryDirectory(prefix="cloudpose-e57-") as folder:
        path = Path(folder) / "upload.e57"
        path.write_bytes(data)
        try:
            with pye57.E57(str(path)) as e57:
                counts = [int(e57.get_header(index).point_count) for index in range(e57.scan_count)]
                total = sum(counts)
                if total > max_points:
                    raise _too_many_points(total, max_points)
                if total * E57_BYTES_PER_POINT > MAX_DECODED_BYTES:
                    raise BadCloudFile(
                        413,
                        f"declares {total} points ({total * E57_BYTES_PER_POINT} bytes as read); this "
                        f"service reads at most {MAX_DECODED_BYTES} bytes of point data",
                    )
                scans = [
                    e57.read_scan(index, ignore_missing_fields=True, transform=True)
                    for index, count in enumerate(counts)
                    if count > 0
                ]
        except BadCloudFile:
            raise
        except Exception as error:  # libE57 checks every page's checksum and the XML tree
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise BadCloudFile(422, f"is not a readable E57 file ({reason})") from error
    if not scans:
        return np.empty((0, 3))
    return np.concatenate(
        [np.stack([scan["cartesianX"], scan["cartesianY"], scan["cartesianZ"]], axis=1) for scan in scans]
    )


# ---------------------------------------------------------------------------------------------
# Which reader reads which file

READERS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    ".ply": read_ply,
    ".pcd": read_pcd,
    ".xyz": functools.partial(read_text, suffix=".xyz"),
    ".txt": functools.partial(read_text, suffix=".txt"),
    ".csv": functools.partial(read_text, suffix=".csv"),
    ".las": read_las,
    ".laz": read_las,
    ".e57": read_e57,
    ".npy": read_npy,
    ".npz": read_npy,
}
