"""Reading WIDER result folders (`nbsrc.evaluation.results.read_result_folder`): the all-at-once fast path gives
exactly what the line-by-line parser `parse_result_text` gives (values, or the error naming file and line), takes
the files it should, and reports the first bad file in name order."""

from __future__ import annotations

import numpy as np
import pytest

from nbsrc.evaluation import results
from nbsrc.evaluation.results import parse_result_text, read_result_folder


def _forbid_slow_path(monkeypatch):
    def refuse(path, data, allowed):
        raise AssertionError(f"{path} went to the line-by-line parser")

    monkeypatch.setattr(results, "_slow_parse", refuse)


def _write(root, name, data: bytes):
    path = root / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _outcome(call):
    """``("ok", rows)`` or ``("error", message)``."""
    try:
        return "ok", call()
    except ValueError as exc:
        return "error", str(exc)


def test_fast_path_is_exact(tmp_path, monkeypatch):
    """Every number equals Python's float of its text (sign of zero included), in one pass over many files."""
    rng = np.random.default_rng(3)
    tokens = [str(int(v)) for v in rng.integers(-5000, 5000, 3000)]
    tokens += [f"{v:.{d}f}" for v, d in zip(rng.normal(0, 500, 3000), rng.integers(0, 9, 3000))]
    tokens += [np.format_float_positional(np.float32(v)) for v in rng.random(3000)]
    tokens += [repr(float(v))[:n] for v, n in zip(rng.random(3000), rng.integers(3, 19, 3000))]
    tokens += [f"{v:.{d}e}" for v, d in zip(rng.normal(0, 1e4, 1000), rng.integers(0, 17, 1000))]
    tokens += ["-0", "-0.0", ".5", "-.25", "7.", "+3", "000123.4500", "99999999999999", "1E3", "2.5e-300"]
    tokens += ["0.1000000000000000055511151231257827", "123456789012345678901234567890", "4.9e-324"]
    order = rng.permutation(len(tokens))
    values = [tokens[i] for i in order]
    values = values[: len(values) // 5 * 5]
    rows = [values[k : k + 5] for k in range(0, len(values), 5)]
    for row in rows:  # widths and heights are not negative
        row[2], row[3] = row[2].lstrip("-+"), row[3].lstrip("-+")
    expected = np.array([[float(t) for t in row] for row in rows])
    names, start = [], 0
    for i, n in enumerate(rng.integers(0, 40, 200)):
        chunk = rows[start : start + n]
        start += len(chunk)
        sep = [" ", "\t", "  ", " \t "][i % 4]
        body = "".join(sep.join(row) + [" ", "", "\t", "\r"][i % 4] + "\n" for row in chunk)
        name = f"{i % 7}--Event/img_{i}"
        _write(tmp_path, name, f"img_{i}\n{len(chunk)}\n{body}".encode())
        names.append(name)
    _forbid_slow_path(monkeypatch)
    got = read_result_folder(tmp_path, names, files_per_chunk=64)
    np.testing.assert_array_equal(got.rows, expected[:start])
    assert np.array_equal(np.signbit(got.rows), np.signbit(expected[:start]))
    assert got.counts.sum() == start


def test_fast_path_takes_crlf_exponents_blank_lines_and_a_missing_final_newline(tmp_path, monkeypatch):
    files = {
        "0--A/a": b"a\r\n2\r\n1 2 3 4 1e-05\r\n5 6 7 8 0.5\r\n",
        "0--A/b": b"b.jpg\n1\n1.5 2.5 3 4 .75",
        "0--A/c": b"c\n2\n\n1 2 3 4 0.5\n   \n\t\n5 6 7 8 0.25\n\n\n",
        "0--A/d": b"d\n0\n",
        "0--A/e": b"e\n0\n\n \n",
        "0--A/f": b"f\n0",
    }
    for name, data in files.items():
        _write(tmp_path, name, data)
    _forbid_slow_path(monkeypatch)
    got = read_result_folder(tmp_path, list(files))
    np.testing.assert_array_equal(
        got.rows,
        [[1, 2, 3, 4, 1e-05], [5, 6, 7, 8, 0.5], [1.5, 2.5, 3, 4, 0.75], [1, 2, 3, 4, 0.5], [5, 6, 7, 8, 0.25]],
    )
    assert got.counts.tolist() == [2, 1, 2, 0, 0, 0]


def test_class_column_files(tmp_path, monkeypatch):
    _write(tmp_path, "0--A/a", b"a\n2\n1 2 3 4 0.9 1\n5 6 7 8 0.8 2.0\n")
    _write(tmp_path, "0--A/b", b"b\n0\n")
    _forbid_slow_path(monkeypatch)
    got = read_result_folder(tmp_path, ["0--A/a", "0--A/b"], columns=(5, 6))
    assert got.rows.shape == (2, 6) and got.counts.tolist() == [2, 0]


# Files the fast path must hand to the line-by-line parser: what it decides (values or error) is the answer.
SLOW_CASES = {
    "underscore": "a\n1\n1_000 2 3 4 0.5\n",  # float() takes it, NumPy does not
    "arabic-indic digit": "a\n1\n\u0663 2 3 4 0.5\n",  # float() takes it
    "no-break space": "a\n1\n1\u00a02 3 4 0.5\n",  # whitespace to str.split
    "file separator": "a\n1\n1\x1c2 3 4 0.5\n",  # whitespace to str.split
    "vertical tab": "a\n1\n1\x0b2 3 4 0.5\n",
    "lone CR": "a\n2\n1 2 3 4 0.5\r5 6 7 8 0.5\n",
    "nan": "a\n1\n1 2 3 4 nan\n",
    "inf": "a\n1\n1 inf 3 4 0.5\n",
    "overflow": "a\n1\n1 2 3 4 1e999\n",
    "negative width": "a\n1\n1 2 -3 4 0.5\n",
    "negative zero height": "a\n1\n1 2 3 -0.0 0.5\n",
    "4 values": "a\n1\n1 2 3 4\n",
    "6 values": "a\n1\n1 2 3 4 0.5 1\n",
    "mixed": "a\n2\n1 2 3 4 0.5\n1 2 3 4 0.5 1\n",
    "letter": "a\n2\n1 2 3 4 0.5\n1 2 3 x 0.5\n",
    "double dot": "a\n1\n1..2 2 3 4 0.5\n",
    "comma": "a\n1\n1,2 2 3 4 0.5\n",
    "hash": "a\n1\n1 2 3 4 0.5 # c\n",
    "too few lines": "a\n3\n1 2 3 4 0.5\n",
    "too many lines": "a\n1\n1 2 3 4 0.5\n1 2 3 4 0.5\n",
    "blank lines hide a missing box": "a\n2\n1 2 3 4 0.5\n\n",
    "negative count": "a\n-1\n",
    "count with underscore": "a\n1_0\n" + "1 2 3 4 0.5\n" * 10,
    "wrong name": "zzz\n0\n",
    "name with folder and extension": "0--A/a.jpg\n1\n1 2 3 4 0.5\n",
    "no count line": "a\n",
    "empty": "",
    "latin-1 byte": "a\n1\n1 2 3 4 0.5\xb5\n",
}


@pytest.mark.parametrize("label", list(SLOW_CASES))
def test_each_file_reads_as_the_line_by_line_parser_says(tmp_path, label):
    text = SLOW_CASES[label]
    data = text.encode("latin-1") if label == "latin-1 byte" else text.encode()
    path = _write(tmp_path, "0--A/a", data)
    expected = _outcome(lambda: parse_result_text(results._decode(data, path), path, columns=(5,)))
    got = _outcome(lambda: read_result_folder(tmp_path, ["0--A/a"]).rows)
    assert got[0] == expected[0]
    if got[0] == "ok":
        np.testing.assert_array_equal(got[1], expected[1])
    else:
        assert got[1] == expected[1] and str(path) in got[1]


def test_first_bad_file_in_name_order_is_reported(tmp_path):
    """Good files around two bad ones, in groups of 16: the first bad file (in name order) is the one named."""
    names = [f"0--A/img_{i:03d}" for i in range(100)]
    for name in names:
        base = name.rsplit("/", 1)[-1]
        _write(tmp_path, name, f"{base}\n2\n1 2 3 4 0.9\n5 6 7 8 0.8\n".encode())
    _write(tmp_path, names[70], b"img_070\n1\n1 2 3 nan 0.5\n")
    _write(tmp_path, names[37], b"img_037\n1\n1 2 3 4 0.5 \n1 2 3 4\n")
    with pytest.raises(ValueError) as info:
        read_result_folder(tmp_path, names, files_per_chunk=16)
    assert str(info.value) == f"{tmp_path / names[37]}.txt:4: expected 5 values, got 4: '1 2 3 4'"
    _write(tmp_path, names[37], b"img_037\n1\n1 2 3 x 0.5\n")
    with pytest.raises(ValueError, match=r"img_037\.txt:3: not a number"):
        read_result_folder(tmp_path, names, files_per_chunk=16)
    _write(tmp_path, names[37], b"img_037\n0\n")
    with pytest.raises(ValueError, match=r"img_070\.txt:3: NaN or infinite coordinate"):
        read_result_folder(tmp_path, names, files_per_chunk=16)
    _write(tmp_path, names[70], b"img_070\n0\n")
    got = read_result_folder(tmp_path, names, files_per_chunk=16)
    assert got.counts.tolist() == [2] * 37 + [0] + [2] * 32 + [0] + [2] * 29


def test_files_with_another_number_of_values(tmp_path):
    """A 6-value file among 5-value ones: named at its first line (same group) or as a whole (other group)."""
    names = [f"0--A/img_{i}" for i in range(4)]
    for name in names:
        _write(tmp_path, name, f"{name[5:]}\n1\n1 2 3 4 0.9\n".encode())
    _write(tmp_path, names[3], b"img_3\n1\n1 2 3 4 0.9 1\n")
    with pytest.raises(ValueError, match=r"img_3\.txt:3: expected 5 \(x y w h score\) values, got 6"):
        read_result_folder(tmp_path, names, columns=(5, 6))
    with pytest.raises(ValueError, match=r"img_3\.txt: 6 values per line, but other files have 5"):
        read_result_folder(tmp_path, names, columns=(5, 6), files_per_chunk=3)
