"""BD-rate of one evaluation's neurocodec curves against another's, clip by clip.

    python -m eval.compare OLD/points.csv NEW/points.csv [--metric psnr_yuv]

:mod:`eval.rd` compares curves coded in the same run; this compares two runs
(the same clips and conditions, another encoder or other weights) from the
``points.csv`` files they wrote, so an earlier run need not be coded again:
a committed ``docs/results/points.csv`` is the anchor as it stands in git
(``git show REV:docs/results/points.csv > old.csv``). Negative: NEW needs
fewer bits for the same quality.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from .bdrate import bd_psnr, bd_rate

Curve = tuple[list[float], list[float]]


def neurocodec_curves(path: Path, metric: str) -> dict[tuple[str, str], Curve]:
    """(sequence, model config) -> (bpp, metric) of every neurocodec point in a ``points.csv``."""
    curves: dict[tuple[str, str], Curve] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["codec"] == "neurocodec":
                rate, quality = curves.setdefault((row["sequence"], row["config"]), ([], []))
                rate.append(float(row["bpp"]))
                quality.append(float(row[metric]))
    return curves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("anchor", type=Path, help="points.csv of the earlier run")
    ap.add_argument("test", type=Path, help="points.csv of the run to compare")
    ap.add_argument("--metric", default="psnr_yuv", help="a quality column of points.csv (higher is better)")
    args = ap.parse_args(argv)
    old, new = (neurocodec_curves(p, args.metric) for p in (args.anchor, args.test))
    shared = [key for key in new if key in old]
    if not shared:
        ap.error("the two files have no (sequence, model) neurocodec curve in common")
    rates = []
    for key in shared:
        rate = bd_rate(*old[key], *new[key])
        gain = bd_psnr(*old[key], *new[key])
        rates.append(rate.value)
        print(f"{key[0]} ({key[1]}): BD-rate {rate.value:+.1f} %, BD-{args.metric} {gain.value:+.2f}"
              + (f" ({rate.reason})" if rate.reason else ""))
    print(f"mean over {len(rates)} curve(s): BD-rate {np.nanmean(rates):+.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
