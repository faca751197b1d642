"""Accuracy per JPEG AI rate on the demo dataset with untrained small models: one latent model at each rate
(and an RGB model on the same images), the table (bpp = suffix / 100, Easy, Medium, Hard), the AP-vs-bpp plot,
and the ``evaluate-rates`` command."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from nbsrc.cli import main as cli_main
from nbsrc.detector import Detector
from nbsrc.evaluation.rates import RateRow, RatesTable, evaluate_rates, plot_ap_vs_bpp
from nbsrc.evaluation.results import read_result_file
from nbsrc.evaluation.widerface import evaluate

SETTINGS = ("easy", "medium", "hard")
PNG = b"\x89PNG\r\n\x1a\n"


def test_table_plot_and_files(demo_root, small_checkpoints, tmp_path):
    latent, rgb = small_checkpoints
    gt_dir = demo_root / "val" / "ground_truth"
    detectors = [Detector.from_checkpoint(latent), Detector.from_checkpoint(rgb)]
    for detector in detectors:  # a cap is asked for explicitly (a checkpoint's training cap is not inherited)
        detector.cfg = detector.cfg.replace(**{"data.max_images": 2})
    table = evaluate_rates(
        detectors[0],
        demo_root,
        tmp_path,
        rgb_weight=detectors[1],
        rates=[100, 12],
        device="cpu",
        batch_size=2,
        progress=False,
    )
    assert [(r.model, r.rate, r.bpp) for r in table.rows] == [
        ("latent", 12, 0.12),
        ("latent", 100, 1.0),
        ("rgb", None, None),
    ]
    for row, folder in zip(table.rows, ("latent_12", "latent_100", "rgb")):
        assert row.pred_dir == str(tmp_path / folder)
        files = sorted((tmp_path / folder).rglob("*.txt"))
        assert len(files) == 2 and all(len(read_result_file(f)[1]) <= 100 for f in files)
        # Each row is the WIDER protocol on that folder, on the split's images only (2 of the 8: a subset).
        assert (row.missing, row.images, row.images_in_gt) == (0, 2, 8)
        names = [f.relative_to(tmp_path / folder).with_suffix("").as_posix() for f in files]
        expected = evaluate(tmp_path / folder, gt_dir, images=names)
        for s in SETTINGS:
            value = getattr(row, s)
            assert (math.isnan(value) and math.isnan(expected[s])) or value == expected[s]
            assert math.isnan(value) or 0.0 <= value <= 1.0
    # The rates see different inputs: the predictions differ.
    assert read_result_file(sorted((tmp_path / "latent_12").rglob("*.txt"))[0])[1].tolist() != (
        read_result_file(sorted((tmp_path / "latent_100").rglob("*.txt"))[0])[1].tolist()
    )

    rows = json.loads((tmp_path / "rates.json").read_text())
    assert [(r["model"], r["rate"], r["bpp"]) for r in rows] == [("latent", 12, 0.12), ("latent", 100, 1.0)] + [
        ("rgb", None, None)
    ]
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "rates.csv").read_text())))
    assert [p["bpp"] for p in parsed] == ["0.12", "1.0", ""]
    assert [(p["images"], p["images_in_gt"]) for p in parsed] == [("2", "8")] * 3
    assert float(parsed[0]["hard"]) == pytest.approx(table.rows[0].hard, abs=1e-6)
    assert (tmp_path / "ap_vs_bpp.png").read_bytes()[:8] == PNG
    markdown = table.to_markdown().splitlines()
    assert markdown[0] == "| model | rate (bpp) | Easy | Medium | Hard |"
    assert markdown[2].startswith("| latent | 0.12 |") and markdown[3].startswith("| latent | 1.00 |")
    assert markdown[4].startswith("| rgb | RGB (640) |")
    assert markdown[5:] == [
        "2 of 8 images; not comparable with published full-set numbers",
        f"ground truth: {gt_dir} (the dataset's val/ground_truth)",
    ]


def test_plot_of_a_known_table(tmp_path):
    rows = [
        RateRow("latent", rate, rate / 100, 0.5 + rate / 400, 0.4 + rate / 400, 0.2 + rate / 400, f"latent_{rate}")
        for rate in (12, 25, 50, 75, 100)
    ]
    table = RatesTable(rows + [RateRow("rgb", None, None, 0.9, 0.85, 0.6, "rgb")])
    assert [r.rate for r in table.latent_rows] == [12, 25, 50, 75, 100] and table.rgb_row.easy == 0.9
    path = plot_ap_vs_bpp(table, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    assert "| latent | 0.25 | 0.5625 | 0.4625 | 0.2625 |" in table.to_markdown()


def test_cli_every_available_rate(demo_root, small_checkpoints, tmp_path, capsys):
    latent, rgb = small_checkpoints
    base = ["evaluate-rates", "--weight", str(latent), "--dataset_root", str(demo_root), "--out", str(tmp_path)]
    base += ["--device", "cpu", "--batch_size", "2", "--no-progress", "--max_images", "2"]
    assert cli_main(base) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| latent |")]
    assert [line.split("|")[2].strip() for line in lines] == ["0.12", "0.25", "0.50", "0.75", "1.00"]
    assert "ap_vs_bpp.png" in out and (tmp_path / "ap_vs_bpp.png").is_file()
    first = json.loads((tmp_path / "rates.json").read_text())
    assert [r["rate"] for r in first] == [12, 25, 50, 75, 100]
    # Resumable: a second run predicts nothing and gives the same numbers.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.txt")}
    assert cli_main(base + ["--rates", "50"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((tmp_path / "rates.json").read_text()) == [r for r in first if r["rate"] == 50]
    # Bad input: an RGB model as the latent model, a missing checkpoint, a rate that is not there.
    rgb_args = ["evaluate-rates", "--weight", str(rgb), "--dataset_root", str(demo_root), "--out", str(tmp_path)]
    assert cli_main(rgb_args) == 2
    assert "must be a latent model" in capsys.readouterr().err
    missing = ["evaluate-rates", "--weight", str(tmp_path / "none.pth"), "--dataset_root", str(demo_root)]
    assert cli_main(missing + ["--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(base + ["--rates", "33"]) == 2
    assert "no latent_33.npy files; available rates: 12, 25, 50, 75, 100" in capsys.readouterr().err
