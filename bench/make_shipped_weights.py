"""Rebuild the package's shipped weights from the original files (`nbsrc.weights`).

- ``nbsrc/weights/mobilenetV1X0.25_imagenet.pth``: the backbone tensors of biubug6's
  ``mobilenetV1X0.25_pretrain.tar`` as a plain state dict (`nbsrc.model.build.convert_imagenet_mobilenet`);
- ``nbsrc/weights/mobilenet0.25_Final.pth``: the published detector, copied byte for byte.

The output is byte-identical from run to run; the script prints each file's size and SHA-256.

    python bench/make_shipped_weights.py [--source ../shared/weights] [--out nbsrc/weights]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from nbsrc.model.build import convert_imagenet_mobilenet
from nbsrc.weights import IMAGENET_MOBILENET, PUBLISHED_DETECTOR

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "weights", help="original files")
    parser.add_argument("--out", type=Path, default=IMAGENET_MOBILENET.parent, help="where to write them")
    args = parser.parse_args(argv)
    written = [
        convert_imagenet_mobilenet(args.source / "mobilenetV1X0.25_pretrain.tar", args.out / IMAGENET_MOBILENET.name)
    ]
    detector = args.out / PUBLISHED_DETECTOR.name
    if (args.source / PUBLISHED_DETECTOR.name).resolve() != detector.resolve():
        shutil.copyfile(args.source / PUBLISHED_DETECTOR.name, detector)
    written.append(detector)
    for path in written:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sys.stdout.write(f"{path}: {path.stat().st_size:,} bytes, sha256 {digest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
