"""WIDER result files: one text file per image, ``<out_dir>/<event>/<basename>.txt``.

Format (the one the WIDER evaluation reads)::

    <basename>
    <count>
    x y w h score
    ...

``x y w h`` is the box in original-image pixels (top-left corner and size, see `nbsrc.boxes`); values are ints
or floats. `write_wider_results` always writes the boxes sorted by descending score, since the protocol reads
them in file order. A 6th column ``cls`` (1 face, 2 person) marks 2-class files (`nbsrc.evaluation.twoclass`).

Reading is strict: a name line that does not match the file, a count that is not a non-negative integer or
differs from the number of box lines, a line with the wrong number of values, a value that is not a number,
a NaN or infinite value, a negative width or height: each raises `ValueError` naming the file and the line.

`read_result_folder` reads thousands of files at once with a vectorized parser (exact: every value equals
Python's ``float`` of its text); any file it cannot take on the fast path is re-read line by line by
`parse_result_text`, which either raises the precise error or returns the values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MANIFEST",
    "ResultSet",
    "format_result_text",
    "parse_result_text",
    "predicted_images",
    "read_result_file",
    "read_result_folder",
    "result_path",
    "write_wider_results",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST = "predictions.json"  # in a prediction folder: what made its result files (`nbsrc.evaluation.predict`)
COLUMN_NAMES = {5: "x y w h score", 6: "x y w h score cls"}


def result_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<event>/<basename>.txt`` for ``name = "<event>/<basename>"`` (or ``<out_dir>/<name>.txt``).

    Raises:
        ValueError: `name` is an absolute path or has a ``..`` component: its file would lie outside `out_dir`.
    """
    from nbsrc.data.readers.common import unsafe_name_reason

    reason = unsafe_name_reason(str(name))
    if reason:
        raise ValueError(
            f"image name {name!r} {reason}: its result file would lie outside {out_dir}; expected a relative "
            "'<event>/<basename>' name"
        )
    name = _strip_extension(str(name).rstrip("/"))
    return Path(out_dir) / f"{name}.txt"


def _strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


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
    """The text of one result file (see the module docstring), boxes sorted by descending score.

    Args:
        basename: image name without folder and extension (the first line).
        boxes_xyxy: ``[N, 4]`` xyxy in original-image pixels (or [0, 1] for normalized 2-class files).
        scores: ``[N]`` scores.
        labels: ``[N]`` class ids; when given, a 6th ``cls`` column is written.
        decimals: decimals of the coordinates (scores keep their float32 precision).
    """
    boxes = np.asarray(boxes_xyxy.detach().cpu() if hasattr(boxes_xyxy, "detach") else boxes_xyxy, np.float64)
    boxes = boxes.reshape(-1, 4)  # (N, 4)
    scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, np.float64)
    scores = scores.reshape(-1)  # (N,)
    if len(scores) != len(boxes):
        raise ValueError(f"{basename}: {len(boxes)} boxes but {len(scores)} scores")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{basename}: boxes or scores hold NaN or infinite values")
    sizes = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
    if (sizes < 0).any():
        bad = int(np.flatnonzero((sizes < 0).any(1))[0])
        raise ValueError(f"{basename}: box {bad} {boxes[bad].tolist()} has x2 < x1 or y2 < y1 (xyxy expected)")
    if labels is not None:
        labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
        labels = labels.reshape(-1)  # (N,)
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
    """Write one image's detections as a WIDER result file, atomically, sorted by descending score.

    Args:
        out_dir: result folder.
        name: ``"<event>/<basename>"`` (an image extension is dropped).
        boxes_xyxy: ``[N, 4]`` xyxy in original-image pixels.
        scores: ``[N]`` scores.
        labels: optional ``[N]`` class ids, written as a 6th column (2-class files).
        decimals: decimals of the coordinates.
    Returns:
        The file written.
    """
    from nbsrc.utils import atomic_write_text

    path = result_path(out_dir, name)
    basename = path.stem
    atomic_write_text(path, format_result_text(basename, boxes_xyxy, scores, labels=labels, decimals=decimals))
    return path


# --------------------------------------------------------------------------------------------- strict reader


def _check_name_line(name_line: str, path: Path, expected: str | None) -> str:
    name = name_line.strip()
    if not name:
        raise ValueError(f"{path}:1: empty name line (expected the image name {expected or path.stem!r})")
    base = _strip_extension(name.replace("\\", "/").rsplit("/", 1)[-1])
    expected = path.stem if expected is None else expected
    if base != expected:
        raise ValueError(f"{path}:1: name line {name!r} does not match the image {expected!r} of this file")
    return base


def _parse_count(count_line: str, path: Path) -> int:
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

    Args:
        text: file content.
        path: file path, for messages (its stem is the expected image name unless `expected_name`).
        columns: accepted numbers of values per line (5: ``x y w h score``, 6: ``... cls``).
        expected_name: image basename the name line must match.
    Returns:
        ``float64 [N, C]`` rows in file order (C = the column count of the file; ``[0, min(columns)]`` when empty).
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
    """All result files of a folder, in the order of the requested names.

    Attributes:
        names: the image names (``"<event>/<basename>"``) in request order.
        rows: ``float64 [R, C]`` rows of all files concatenated (``x y w h score [cls]``).
        counts: ``int64 [I]`` rows per image.
        missing: names without a file (read as empty when allowed).
    """

    names: list[str]
    rows: np.ndarray
    counts: np.ndarray
    missing: list[str]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.counts)))


def _list_result_files(pred_dir: Path) -> set[str]:
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
    """The images a prediction folder covers: the names its ``predictions.json`` lists (the split it was predicted
    for, `nbsrc.evaluation.predict`), else those with a result file; ``"<event>/<basename>"``, sorted.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: an unreadable ``predictions.json``.
    """
    import json

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
        return sorted({_strip_extension(str(n).rstrip("/")) for n in names})
    return sorted(_list_result_files(pred_dir))


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
    """Read the result files of the images `names` from `pred_dir` (``<pred_dir>/<name>.txt``).

    Args:
        pred_dir: result folder.
        names: image names ``"<event>/<basename>"``; their order is the order of the output.
        columns: accepted values per line (5, or 6 with a class column); one count for the whole folder.
        missing: ``"error"`` raises `FileNotFoundError` listing the images without a file; ``"empty"`` reads them
            as images without detections, with a warning.
        files_per_chunk: files parsed per vectorized step (bounds memory).
        workers: reading / parsing threads (default 2).
        ignore: names whose files are neither read nor reported as matching no image (images of the ground truth
            left out of a subset evaluation).
        missing_hint: what else to do about missing files, added to the ``missing="error"`` message.
    Returns:
        A `ResultSet`.
    Raises:
        FileNotFoundError: folder missing, or images without a file (``missing="error"``).
        ValueError: a malformed file (file and line named), or result files that match no image.
    """
    if missing not in ("error", "empty"):
        raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} not found")
    names = [str(n) for n in names]
    found = _list_result_files(pred_dir)
    wanted = set(names)
    extra = sorted(found - wanted - set(ignore))
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
    absent_set = set(absent)

    columns = tuple(sorted(set(columns)))
    per_file: list[np.ndarray | None] = [None] * len(names)
    tasks: list[list[tuple[int, Path]]] = [[]]
    for index, name in enumerate(names):
        if name in absent_set:
            per_file[index] = np.zeros((0, columns[0]))
            continue
        if len(tasks[-1]) >= files_per_chunk:
            tasks.append([])
        tasks[-1].append((index, pred_dir / f"{name}.txt"))

    def work(task: list[tuple[int, Path]]) -> list[tuple[int, np.ndarray]]:
        return _parse_chunk([(index, path, _read_bytes(path)) for index, path in task], columns)

    # File reads and most NumPy passes release the GIL: two threads overlap them.
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

    width = next((rows.shape[1] for rows in per_file if rows is not None and len(rows)), columns[0])
    parts = []
    for index, rows in enumerate(per_file):
        assert rows is not None
        if len(rows) and rows.shape[1] != width:
            raise ValueError(
                f"{pred_dir / names[index]}.txt: {rows.shape[1]} values per line, but other files have {width}"
            )
        parts.append(rows.reshape(-1, width))  # (n, C)
    counts = np.array([len(p) for p in parts], np.int64)
    all_rows = np.concatenate(parts) if parts else np.zeros((0, width))
    return ResultSet(names=names, rows=all_rows, counts=counts, missing=absent)


def _read_bytes(path: Path, block: int = 1 << 16) -> bytes:
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


def _slow_parse(path: Path, data: bytes, allowed: tuple[int, ...]) -> np.ndarray:
    return parse_result_text(_decode(data, path), path, columns=allowed, expected_name=path.stem)


def _parse_chunk(chunk: list[tuple[int, Path, bytes]], columns: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Parse the bodies of a group of files at once; files the fast path cannot take go to `_slow_parse`."""
    bodies = []
    declared = np.empty(len(chunk), np.int64)
    slow = np.zeros(len(chunk), bool)
    for k, (_, path, data) in enumerate(chunk):
        first = data.find(b"\n")
        second = data.find(b"\n", first + 1) if first >= 0 else -1
        body = b""
        try:
            if first < 0:
                raise ValueError
            _check_name_line(data[:first].decode("utf-8"), path, None)
            count_line = data[first + 1 :] if second < 0 else data[first + 1 : second]
            declared[k] = _parse_count(count_line.decode("utf-8"), path)
            if second >= 0:
                body = data[second + 1 :]
        except (ValueError, UnicodeDecodeError):
            slow[k] = True  # the slow parser raises the precise error
            declared[k] = 0
        if body and not body.endswith(b"\n"):
            body += b"\n"
        bodies.append(body)
    body_ends = np.cumsum([len(b) for b in bodies])  # (F,)
    buf = b"".join(bodies)
    values, line_tokens, line_end, token_ok = _parse_numbers(buf)

    # Per line: its file; per file: data lines, bad lines, bad tokens.
    line_file = np.searchsorted(body_ends, line_end, side="right")  # (L,)
    data_lines = line_tokens[line_tokens > 0]
    width = int(data_lines[0]) if len(data_lines) and int(data_lines[0]) in columns else columns[0]
    nonblank = line_tokens > 0
    bad_line = nonblank & (line_tokens != width)
    slow |= np.bincount(line_file[bad_line], minlength=len(chunk)).astype(bool)
    rows_per_file = np.bincount(line_file[nonblank], minlength=len(chunk))
    slow |= rows_per_file != declared
    if not token_ok.all():
        token_line = np.searchsorted(np.cumsum(line_tokens), np.flatnonzero(~token_ok), side="right")
        slow[line_file[token_line]] = True

    if slow.all():
        fast_rows = np.zeros((0, width))
    else:
        token_file = np.repeat(line_file, line_tokens)  # (T,)
        fast_rows = values[~slow[token_file]].reshape(-1, width)  # (R, C)
        sizes_bad = (fast_rows[:, 2] < 0) | (fast_rows[:, 3] < 0)
        if width == 6:
            sizes_bad |= fast_rows[:, 5] != np.floor(fast_rows[:, 5])
        if sizes_bad.any():
            fast_counts = np.where(slow, 0, rows_per_file)
            bad_files = np.searchsorted(np.cumsum(fast_counts), np.flatnonzero(sizes_bad), side="right")
            slow[bad_files] = True
            token_file_ok = ~slow[token_file]
            fast_rows = values[token_file_ok].reshape(-1, width)  # (R, C)
    fast_counts = np.where(slow, 0, rows_per_file)
    pieces = np.split(fast_rows, np.cumsum(fast_counts)[:-1])
    allowed = (width,) if len(data_lines) and width in columns else columns
    return [
        (index, _slow_parse(path, data, allowed) if slow[k] else pieces[k])
        for k, (index, path, data) in enumerate(chunk)
    ]


# Powers of ten, exact in float64 up to 1e22.
_POW10 = 10.0 ** np.arange(23)
_MAX_DIGITS = 15  # mantissas below 10**15 < 2**53 are exact; one division then rounds correctly


def _parse_numbers(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized parse of whitespace-separated decimal numbers (``-?digits[.digits]``).

    A value equals Python's ``float`` of its token: the token's digits form an integer mantissa below
    ``10**15`` (exact in float64) that is divided once by an exact power of ten, which rounds correctly.
    Tokens of another form (exponents, ``nan``, more digits, stray characters) are flagged, not parsed.

    Args:
        buf: text ending with a newline (or empty).
    Returns:
        ``(values float64 [T], tokens per line int [L], offset of each line's newline int [L],
        token_ok bool [T])``.
    """
    c = np.frombuffer(buf, np.uint8)
    if len(c) == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0), empty, empty, np.zeros(0, bool)
    newline = c == 10
    is_sep = newline | (c == 32) | (c == 9) | (c == 13)
    line_end = np.flatnonzero(newline)  # (L,)
    flips = np.flatnonzero(is_sep[1:] != is_sep[:-1]) + 1
    if not is_sep[0]:
        flips = np.concatenate(([0], flips))
    starts, ends = flips[0::2], flips[1::2]  # buf ends with "\n", so every token ends
    line_tokens = np.diff(np.searchsorted(starts, line_end), prepend=0)  # (L,)

    lengths = ends - starts  # (T,)
    token_chars = c[~is_sep]  # (K,) token characters, compacted
    offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    digit = token_chars - np.uint8(48)  # (K,)
    is_digit = digit < 10
    digits_before = np.cumsum(is_digit, dtype=np.int32)  # (K,) inclusive
    digits_at_end = digits_before[offsets[1:] - 1]  # (T,)
    n_digits = np.diff(digits_at_end, prepend=np.int32(0))  # (T,)
    # Weight of each digit: 10 ** (digits after it in its token).
    after = np.repeat(digits_at_end, lengths) - digits_before  # (K,)
    np.clip(after, 0, len(_POW10) - 1, out=after)
    term = _POW10[after]
    term *= digit
    term[~is_digit] = 0.0
    mantissa = np.add.reduceat(term, offsets[:-1])  # (T,)

    token_ok = (n_digits >= 1) & (n_digits <= _MAX_DIGITS)
    dot = np.flatnonzero(token_chars == 46)
    minus = np.flatnonzero(token_chars == 45)
    other = np.flatnonzero(~is_digit & (token_chars != 46) & (token_chars != 45))
    decimals = np.zeros(len(starts), np.int64)
    if len(dot):
        dot_token = np.searchsorted(offsets, dot, side="right") - 1
        decimals[dot_token] = digits_at_end[dot_token] - digits_before[dot]
        token_ok &= np.bincount(dot_token, minlength=len(starts)) <= 1
    negative = np.zeros(len(starts), bool)
    if len(minus):
        minus_token = np.searchsorted(offsets, minus, side="right") - 1
        at_start = offsets[minus_token] == minus
        token_ok[minus_token[~at_start]] = False
        negative[minus_token[at_start]] = True
    if len(other):
        token_ok[np.searchsorted(offsets, other, side="right") - 1] = False
    values = mantissa / _POW10[decimals]
    np.negative(values, out=values, where=negative)
    return values, line_tokens, line_end, token_ok
