"""WIDER result files: one text file per image, ``<out_dir>/<event>/<basename>.txt``::

    <basename>
    <count>
    x y w h score [cls]

``x y w h`` is the box in original-image pixels (top-left corner and size, see `nbsrc.boxes`), written sorted by
descending score (the protocol reads them in file order). The optional ``cls`` column (1 face, 2 person) marks
2-class files (`nbsrc.evaluation.twoclass`).

Reading is strict: a wrong name line or count, a line with the wrong number of values, a value that is not a
finite number, a negative width or height each raise `ValueError` naming the file and the line.
`read_result_folder` parses groups of files with one NumPy text-reader call (exact: each value equals Python's
``float`` of its text); a file the fast path cannot take is re-read line by line by `parse_result_text`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbsrc.data.readers.common import strip_image_extension, unsafe_name_reason
from nbsrc.utils import atomic_write_text

__all__ = [
    "MANIFEST",
    "ResultSet",
    "format_result_text",
    "list_result_files",
    "parse_result_text",
    "predicted_images",
    "read_result_file",
    "read_result_folder",
    "result_path",
    "strip_image_extension",
    "write_wider_results",
]

logger = logging.getLogger(__name__)

MANIFEST = "predictions.json"  # in a prediction folder: what made its result files (`nbsrc.evaluation.predict`)
COLUMN_NAMES = {5: "x y w h score", 6: "x y w h score cls"}


def result_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<event>/<basename>.txt`` for ``name = "<event>/<basename>"``; `ValueError` for an absolute
    name or one with a ``..`` component (its file would lie outside `out_dir`)."""
    reason = unsafe_name_reason(str(name))
    if reason:
        raise ValueError(
            f"image name {name!r} {reason}: its result file would lie outside {out_dir}; expected a relative "
            "'<event>/<basename>' name"
        )
    name = strip_image_extension(str(name).rstrip("/"))
    return Path(out_dir) / f"{name}.txt"


def _numpy(values, dtype=None) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype)


def _fmt(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def format_result_text(
    basename: str,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    decimals: int = 2,
) -> str:
    """The text of one result file, boxes sorted by descending score.

    `boxes_xyxy` ``[N, 4]`` xyxy in original-image pixels (or [0, 1] for normalized 2-class files), `scores`
    ``[N]``, optional `labels` ``[N]`` class ids (written as a ``cls`` column). `decimals` applies to the
    coordinates; scores keep their float32 precision.
    """
    boxes = _numpy(boxes_xyxy, np.float64).reshape(-1, 4)  # (N, 4)
    scores = _numpy(scores, np.float64).reshape(-1)  # (N,)
    if len(scores) != len(boxes):
        raise ValueError(f"{basename}: {len(boxes)} boxes but {len(scores)} scores")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{basename}: boxes or scores hold NaN or infinite values")
    sizes = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    if (sizes < 0).any():
        bad = int(np.flatnonzero((sizes < 0).any(1))[0])
        raise ValueError(f"{basename}: box {bad} {boxes[bad].tolist()} has x2 < x1 or y2 < y1 (xyxy expected)")
    if labels is not None:
        labels = _numpy(labels).reshape(-1)  # (N,)
        if len(labels) != len(boxes):
            raise ValueError(f"{basename}: {len(boxes)} boxes but {len(labels)} labels")
    order = np.argsort(-scores, kind="stable")
    lines = [basename, str(len(boxes))]
    for i in order:
        x1, y1 = boxes[i, 0], boxes[i, 1]
        w, h = sizes[i]
        score = np.format_float_positional(np.float32(scores[i]), trim="-")
        line = f"{_fmt(x1, decimals)} {_fmt(y1, decimals)} {_fmt(w, decimals)} {_fmt(h, decimals)} {score}"
        if labels is not None:
            line += f" {int(labels[i])}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_wider_results(
    out_dir: str | Path,
    name: str,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    decimals: int = 2,
) -> Path:
    """Write one image's detections (see `format_result_text`) atomically to `result_path`; returns the file.

    `name` is ``"<event>/<basename>"`` (an image extension is dropped).
    """
    path = result_path(out_dir, name)
    atomic_write_text(path, format_result_text(path.stem, boxes_xyxy, scores, labels=labels, decimals=decimals))
    return path


# --------------------------------------------------------------------------------------------- strict reader


def _check_name_line(name_line: str, path: str | Path, expected: str | None) -> str:
    name = name_line.strip()
    if not name:
        raise ValueError(f"{path}:1: empty name line (expected the image name {expected or path.stem!r})")
    base = strip_image_extension(name.replace("\\", "/").rsplit("/", 1)[-1])
    expected = Path(path).stem if expected is None else expected
    if base != expected:
        raise ValueError(f"{path}:1: name line {name!r} does not match the image {expected!r} of this file")
    return base


def _parse_count(count_line: str, path: str | Path) -> int:
    try:
        count = int(count_line.strip())
    except ValueError:
        raise ValueError(f"{path}:2: expected the number of boxes, got {count_line.strip()!r}") from None
    if count < 0:
        raise ValueError(f"{path}:2: negative number of boxes {count}")
    return count


def parse_result_text(
    text: str, path: str | Path, columns: Sequence[int] = (5,), expected_name: str | None = None
) -> np.ndarray:
    """Parse one result file line by line (the reference parser; every error names file and line).

    `path` is named in messages; its stem is the expected image name unless `expected_name` is given. `columns`
    are the accepted numbers of values per line (5: ``x y w h score``, 6: ``... cls``).

    Returns:
        ``float64 [N, C]`` rows in file order (``[0, min(columns)]`` when empty).
    """
    path = Path(path)
    lines = text.split("\n")
    if len(lines) < 2 or (len(lines) == 2 and not lines[1].strip()):
        raise ValueError(f"{path}: expected a name line and a count line, got {len(text.splitlines())} line(s)")
    _check_name_line(lines[0], path, expected_name)
    count = _parse_count(lines[1], path)
    rows: list[list[float]] = []
    ncols: int | None = None
    for number, line in enumerate(lines[2:], 3):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) not in columns or (ncols is not None and len(tokens) != ncols):
            want = ncols or " or ".join(f"{c} ({COLUMN_NAMES.get(c, '')})" for c in columns)
            raise ValueError(f"{path}:{number}: expected {want} values, got {len(tokens)}: {line.strip()!r}")
        ncols = len(tokens)
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise ValueError(f"{path}:{number}: not a number in {line.strip()!r}") from None
        if not np.isfinite(values).all():
            what = "NaN or infinite score" if not np.isfinite(values[4]) else "NaN or infinite coordinate"
            if ncols == 6 and not np.isfinite(values[5]):
                what = "NaN or infinite class"
            raise ValueError(f"{path}:{number}: {what} in {line.strip()!r}")
        if values[2] < 0 or values[3] < 0:
            raise ValueError(f"{path}:{number}: negative width or height in {line.strip()!r}")
        if ncols == 6 and values[5] != int(values[5]):
            raise ValueError(f"{path}:{number}: class must be an integer, got {tokens[5]!r}")
        rows.append(values)
    if len(rows) != count:
        raise ValueError(f"{path}:2: declares {count} boxes but the file has {len(rows)} box lines")
    if not rows:
        return np.zeros((0, min(columns)), np.float64)
    return np.asarray(rows, dtype=np.float64)


def read_result_file(path: str | Path, columns: Sequence[int] = (5,)) -> tuple[str, np.ndarray]:
    """Read one result file strictly: ``(basename, float64 [N, C] rows)`` (see `parse_result_text`)."""
    path = Path(path)
    text = _decode(path.read_bytes(), path)
    return path.stem, parse_result_text(text, path, columns=columns)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from None


# ------------------------------------------------------------------------------------------ folder reader


@dataclass
class ResultSet:
    """All result files of a folder, in the order of the requested names."""

    names: list[str]  # "<event>/<basename>"
    rows: np.ndarray  # float64 [R, C] rows of all files concatenated: x y w h score [cls]
    counts: np.ndarray  # int64 [I] rows per image
    missing: list[str]  # names without a file (read as empty when allowed)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.counts)))


def list_result_files(pred_dir: Path) -> set[str]:
    """Relative names (without ``.txt``) of every result file under `pred_dir` (hidden temp files skipped)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(pred_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, pred_dir)
        for filename in filenames:
            if filename.startswith(".") or not filename.endswith(".txt"):
                continue
            stem = filename[:-4]
            found.add(stem if rel == "." else f"{rel.replace(os.sep, '/')}/{stem}")
    return found


def predicted_images(pred_dir: str | Path) -> list[str]:
    """The images a prediction folder covers, ``"<event>/<basename>"`` sorted: the names its ``predictions.json``
    lists (`nbsrc.evaluation.predict`), else those with a result file."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} not found")
    manifest = pred_dir / MANIFEST
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text())["names"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{manifest}: not a prediction manifest with a 'names' list ({err})") from None
        if not isinstance(names, list):
            raise ValueError(f"{manifest}: 'names' is not a list")
        return sorted({strip_image_extension(str(n).rstrip("/")) for n in names})
    return sorted(list_result_files(pred_dir))


def read_result_folder(
    pred_dir: str | Path,
    names: Sequence[str],
    columns: Sequence[int] = (5,),
    missing: str = "error",
    files_per_chunk: int = 64,
    workers: int | None = None,
    ignore: Collection[str] = (),
    missing_hint: str | None = None,
) -> ResultSet:
    """Read ``<pred_dir>/<name>.txt`` of every image of `names` (``"<event>/<basename>"``), in that order.

    Args:
        columns: accepted values per line (5, or 6 with a class column); one count for the whole folder.
        missing: ``"error"`` raises `FileNotFoundError` listing the images without a file; ``"empty"`` reads them
            as images without detections, with a warning.
        files_per_chunk: files parsed in one go (bounds memory).
        workers: reading / parsing threads (default 2: one reads files while the other parses).
        ignore: names whose files are neither read nor reported as matching no image (ground-truth images left
            out of a subset evaluation).
        missing_hint: added to the ``missing="error"`` message.
    Raises:
        ValueError: a malformed file (file and line named), or result files that match no image.
    """
    if missing not in ("error", "empty"):
        raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} not found")
    names = [str(n) for n in names]
    absent = _absent_images(pred_dir, names, ignore, missing, missing_hint)
    columns = tuple(sorted(set(columns)))
    per_file = _read_files(pred_dir, names, set(absent), columns, files_per_chunk, workers)
    rows, counts = _concatenate(pred_dir, names, per_file, columns[0])
    return ResultSet(names=names, rows=rows, counts=counts, missing=absent)


def _absent_images(
    pred_dir: Path, names: list[str], ignore: Collection[str], missing: str, missing_hint: str | None
) -> list[str]:
    """The images of `names` without a result file; raises for result files that match no image."""
    found = list_result_files(pred_dir)
    extra = sorted(found - set(names) - set(ignore))
    if extra:
        shown = ", ".join(f"{pred_dir / e}.txt" for e in extra[:10])
        raise ValueError(
            f"{len(extra)} result file(s) in {pred_dir} match no ground-truth image "
            f"(expected <event>/<basename>.txt): {shown}{' ...' if len(extra) > 10 else ''}"
        )
    absent = [n for n in names if n not in found]
    if absent:
        shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
        if missing == "error":
            raise FileNotFoundError(
                f"{len(absent)} of {len(names)} images have no result file in {pred_dir}: {shown} "
                f"(allow missing files to count them as images without detections"
                + (f", {missing_hint})" if missing_hint else ")")
            )
        logger.warning(
            "%d of %d images have no result file in %s; counted as empty: %s", len(absent), len(names), pred_dir, shown
        )
    return absent


def _read_files(
    pred_dir: Path,
    names: list[str],
    absent: set[str],
    columns: tuple[int, ...],
    files_per_chunk: int,
    workers: int | None,
) -> list[np.ndarray]:
    """``float64 [n, C]`` rows of every image of `names` (``[0, columns[0]]`` for an absent one)."""
    per_file: list[np.ndarray | None] = [None] * len(names)
    tasks: list[list[tuple[int, str]]] = [[]]
    for index, name in enumerate(names):
        if name in absent:
            per_file[index] = np.zeros((0, columns[0]))
            continue
        if len(tasks[-1]) >= files_per_chunk:
            tasks.append([])
        tasks[-1].append((index, name))
    base = str(pred_dir)

    def work(task: list[tuple[int, str]]) -> list[tuple[int, np.ndarray]]:
        chunk = [(index, name, _read_bytes(os.path.join(base, f"{name}.txt"))) for index, name in task]
        return _parse_chunk(chunk, pred_dir, columns)

    # File reads release the GIL: a second thread reads the next group while one is parsed.
    workers = max(1, min(workers or 2, len(tasks), os.cpu_count() or 1))
    if workers == 1:
        parsed = map(work, tasks)
    else:
        pool = ThreadPoolExecutor(workers)
        parsed = pool.map(work, tasks)
    try:
        for result in parsed:  # in task order: the first bad file (in name order) raises
            for index, rows in result:
                per_file[index] = rows
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    return per_file


def _concatenate(
    pred_dir: Path, names: list[str], per_file: list[np.ndarray], default_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 [R, C] rows of all files, int64 [I] rows per file)``; all files must have one width."""
    width = next((rows.shape[1] for rows in per_file if len(rows)), default_width)
    parts = []
    for index, rows in enumerate(per_file):
        if len(rows) and rows.shape[1] != width:
            raise ValueError(
                f"{pred_dir / names[index]}.txt: {rows.shape[1]} values per line, but other files have {width}"
            )
        parts.append(rows.reshape(-1, width))  # (n, C)
    counts = np.array([len(p) for p in parts], np.int64)
    all_rows = np.concatenate(parts) if parts else np.zeros((0, width))
    return all_rows, counts


def _read_bytes(path: str | Path, block: int = 1 << 16) -> bytes:
    """A whole file with plain ``os.read`` calls (no buffered file object: thousands of small files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, block)
        if len(data) < block:
            return data
        parts = [data]
        while data:
            data = os.read(fd, block)
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _slow_parse(path: Path, data: bytes, allowed: tuple[int, ...]) -> np.ndarray:  # replaced in tests
    return parse_result_text(_decode(data, path), path, columns=allowed, expected_name=path.stem)


# Bytes of a body the fast path takes: decimal numbers (with exponents), spaces, tabs, newlines (CR only in
# CRLF). Within them NumPy's text reader and `parse_result_text` agree on lines, blanks and whitespace.
_FAST_BYTES = b"0123456789.-+eE \t\r\n"


def _fast_rows(bodies: Sequence[bytes], rows_expected: int, allowed: tuple[int, ...]) -> np.ndarray | None:
    """``float64 [R, C]`` of the box lines of `bodies` (file bodies, each ending with a newline) parsed at once, or
    None when any of them needs the line-by-line parser.

    Exact: NumPy's text reader converts tokens with the function Python's ``float`` uses. None for anything the
    line-by-line parser must judge: a byte outside `_FAST_BYTES`, a token or line NumPy rejects, a width not in
    `allowed`, a row count other than `rows_expected`, a non-finite value, a negative size, a fractional class.
    """
    buf = b"".join(bodies)
    if buf.translate(None, _FAST_BYTES) or (b"\r" in buf and buf.count(b"\r") != buf.count(b"\r\n")):
        return None
    if rows_expected == 0:
        return np.zeros((0, allowed[0])) if not buf.strip() else None
    try:
        rows = np.loadtxt(io.BytesIO(buf), dtype=np.float64, comments=None, ndmin=2, encoding="latin-1")
    except ValueError:
        return None
    if rows.shape[0] != rows_expected or rows.shape[1] not in allowed or not np.isfinite(rows).all():
        return None
    if (rows[:, 2] < 0).any() or (rows[:, 3] < 0).any():
        return None
    if rows.shape[1] == 6 and (rows[:, 5] != np.floor(rows[:, 5])).any():
        return None
    return rows


def _box_lines(body: bytes, declared: int) -> int:
    """Non-blank lines of a body ending with a newline (its newline count unless it holds blank lines)."""
    lines = body.count(b"\n")
    if lines == declared:  # `_fast_rows` checks that no line is blank: its rows are then exactly these lines
        return lines
    return sum(1 for line in body.split(b"\n") if line.strip())


def _first_line_width(bodies: Sequence[bytes]) -> int | None:
    """Number of values on the first non-blank line of `bodies` (None when there is none)."""
    for body in bodies:
        for line in body.split(b"\n"):
            if line.strip():
                return len(line.split())
    return None


def _parse_chunk(
    chunk: list[tuple[int, str, bytes]], pred_dir: Path, columns: tuple[int, ...]
) -> list[tuple[int, np.ndarray]]:
    """Parse a group of files (``(index, name, bytes)``, in name order), all box lines at once (`_fast_rows`).

    A file whose name or count line is wrong, or whose box lines do not match its count, goes to
    `parse_result_text` for the precise error. When the group cannot be taken at once, each file is tried alone,
    in order, so that the first bad file in name order is reported. All files must have the width of the group's
    first box line.
    """
    bodies: list[bytes] = []
    lines: list[int] = []
    slow = [False] * len(chunk)
    for k, (_, name, data) in enumerate(chunk):
        first = data.find(b"\n")
        second = data.find(b"\n", first + 1) if first >= 0 else -1
        body = b""
        count = 0
        try:
            if first < 0:
                raise ValueError
            _check_name_line(data[:first].decode("utf-8"), name, name.rsplit("/", 1)[-1])
            count = _parse_count((data[first + 1 :] if second < 0 else data[first + 1 : second]).decode("utf-8"), name)
            if second >= 0:
                body = data[second + 1 :]
                if body and not body.endswith(b"\n"):
                    body += b"\n"
        except (ValueError, UnicodeDecodeError):
            slow[k] = True  # the line-by-line parser raises the precise error
        bodies.append(body)
        lines.append(_box_lines(body, count))
        slow[k] = slow[k] or lines[k] != count

    width = _first_line_width(bodies)
    allowed = columns if width is None else ((width,) if width in columns else columns[:1])
    fast = [k for k in range(len(chunk)) if not slow[k]]
    rows = _fast_rows([bodies[k] for k in fast], sum(lines[k] for k in fast), allowed) if fast else None

    pieces: dict[int, np.ndarray] = {}
    if rows is not None:
        ends = np.cumsum([lines[k] for k in fast]).tolist()
        pieces = {k: rows[end - lines[k] : end] for k, end in zip(fast, ends)}
    out: list[tuple[int, np.ndarray]] = []
    for k, (index, name, data) in enumerate(chunk):
        piece = pieces.get(k)
        if piece is None and rows is None and not slow[k]:  # one file at a time: the first bad one is reported
            piece = _fast_rows([bodies[k]], lines[k], allowed)
        if piece is None:
            piece = _slow_parse(pred_dir / f"{name}.txt", data, allowed)
        out.append((index, piece))
    return out
