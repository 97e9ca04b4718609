"""Evaluation suite: RD curves against x264/x265, BD-rates, speed and memory benchmarks.

Modules:

* :mod:`eval.baselines` -- x264 / x265 anchors through PyAV, fed exactly the
  BT.709 4:2:0 YUV that neurocodec's metrics use.
* :mod:`eval.bdrate` -- Bjontegaard delta rate / PSNR (PCHIP over log-rate).
* :mod:`eval.rd` -- ``python -m eval.rd VIDEO... --out DIR``: every codec on the
  same frames, per-frame metrics, BD-rates, JSON/CSV/PNG/Markdown reports.
* :mod:`eval.report` -- writes those reports.
* :mod:`eval.bench` -- ``python -m eval.bench``: encode/decode speed, latency,
  peak memory and a per-stage time breakdown.
* :mod:`eval.measure` -- peak-memory and environment helpers shared by both.

Run from the repository root (``eval`` is not installed with the package).
"""
