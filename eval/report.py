"""Reports of an RD evaluation: results.json, points.csv, RD plots and summary.md.

Why separate from :mod:`eval.rd`: the notebook and other scripts plot and
tabulate points they computed themselves, without running the CLI.

Averages over sequences: the average BD-rate is the mean of the per-sequence
BD-rates (the JVET/CTC convention), not the BD-rate of an averaged curve;
sequences where the BD-rate is NaN are left out and the cell says how many
sequences it covers. ``rd_average.png`` plots, per curve and rate parameter,
the mean bpp and mean PSNR over the sequences (an illustration only).
Plots are drawn on bare matplotlib ``Figure`` objects and rendered by Agg,
never through pyplot: they work headless, and importing this module does not
change the backend of an interactive session (a notebook keeps inline plots).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from eval.rd import RDPoint

__all__ = ["average_bd", "average_curves", "curves", "plot_curves", "write_all"]

CSV_FIELDS = ("sequence", "codec", "config", "param", "width", "height", "frames", "fps", "bytes", "bpp", "kbps",
              "psnr_rgb", "psnr_y", "psnr_u", "psnr_v", "psnr_yuv", "ms_ssim", "encode_fps", "decode_fps")
_COLOURS = {"neurocodec": "C3", "x264": "C0", "x265": "C2"}
_STYLES = ("-", "--", ":", "-.")
LOW_OVERLAP = 0.75

Curves = dict[str, tuple[list[float], list[float]]]


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become null so the file is strict JSON."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def curves(points: Iterable[RDPoint], metric: str = "psnr_yuv") -> Curves:
    """``{curve name: (bpp values, metric values)}`` sorted by rate."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if getattr(p, metric) is not None:
            out.setdefault(p.curve, []).append((p.bpp, getattr(p, metric)))
    return {k: tuple(map(list, zip(*sorted(v), strict=True))) for k, v in out.items()}  # type: ignore[misc]


def average_curves(points: list[RDPoint], metric: str = "psnr_yuv") -> Curves:
    """Per curve and rate parameter, mean bpp and metric over the sequences that all have it."""
    seqs = {p.sequence for p in points}
    groups: dict[tuple[str, str], list[RDPoint]] = {}
    for p in points:
        groups.setdefault((p.curve, p.param), []).append(p)
    out: dict[str, list[tuple[float, float]]] = {}
    for (curve, _), ps in groups.items():
        if {p.sequence for p in ps} == seqs and all(getattr(p, metric) is not None for p in ps):
            out.setdefault(curve, []).append((sum(p.bpp for p in ps) / len(ps),
                                              sum(getattr(p, metric) for p in ps) / len(ps)))
    return {k: tuple(map(list, zip(*sorted(v), strict=True))) for k, v in out.items()}  # type: ignore[misc]


def plot_curves(ax: Axes, data: Curves, *, ylabel: str = "PSNR-YUV (6:1:1) [dB]", title: str | None = None) -> None:
    """One line per codec configuration: neurocodec red, x264 blue, x265 green; line style per preset."""
    configs: dict[bool, dict[str, int]] = {True: {}, False: {}}  # line styles counted per family
    for name, (x, y) in data.items():
        codec, _, config = name.partition(" ")
        family = configs[codec == "neurocodec"]
        style = _STYLES[family.setdefault(config, len(family)) % len(_STYLES)]
        ax.plot(x, y, style, marker="o", ms=4, color=_COLOURS.get(codec), label=name)
    ax.set_xlabel("rate [bits per pixel]")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)


def _save_plot(path: Path, data: Curves, title: str) -> None:
    """PNG through a bare Figure (Agg renderer): headless, and no pyplot state or backend switch."""
    fig = Figure(figsize=(7, 5), dpi=110)
    plot_curves(fig.subplots(), data, title=title)
    fig.tight_layout()
    fig.savefig(path, format="png")


def average_bd(rows: list[dict[str, Any]], n_sequences: int) -> list[dict[str, Any]]:
    """Mean BD-rate / BD-quality over sequences per (test, anchor, metric); NaNs left out and counted."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["test"], r["anchor"], r["metric"]), []).append(r)
    out = []
    for (test, anchor, metric), rs in groups.items():
        entry: dict[str, Any] = {"sequence": "average", "test": test, "anchor": anchor, "metric": metric,
                                 "metric_label": rs[0]["metric_label"], "sequences": n_sequences}
        for key in ("bd_rate", "bd_quality"):
            vals = [r[key]["value"] for r in rs if r[key]["value"] is not None]
            entry[key] = {"value": sum(vals) / len(vals) if vals else None, "count": len(vals),
                          "reason": None if vals else "no sequence gave a value"}
        out.append(entry)
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _bd_table(rows: list[dict[str, Any]], avg: list[dict[str, Any]], seqs: list[str], metric: str, key: str,
              unit: str, notes: dict[str, int]) -> list[str]:
    pairs = list(dict.fromkeys((r["test"], r["anchor"]) for r in rows if r["metric"] == metric))
    if not pairs:
        return ["(no comparable curves)"]
    cell: dict[tuple[str, str, str], dict[str, Any]] = {
        (r["sequence"], r["test"], r["anchor"]): r[key] for r in rows + avg if r["metric"] == metric}
    lines = ["| sequence | " + " | ".join(f"{t} vs {a}" for t, a in pairs) + " |",
             "|---|" + "---:|" * len(pairs)]
    for seq in [*seqs, "average"]:
        cells = []
        for t, a in pairs:
            c = cell.get((seq, t, a))
            if c is None:
                cells.append("")
            elif c["value"] is None:
                n = notes.setdefault(c["reason"], len(notes) + 1)
                cells.append(f"n/a [{n}]")
            else:
                s = f"{c['value']:+.2f}{unit}"
                if seq != "average" and (c.get("overlap") or 1.0) < LOW_OVERLAP:
                    s += " †"
                if seq == "average" and c["count"] < len(seqs):
                    s += f" ({c['count']}/{len(seqs)} seq.)"
                cells.append(s)
        lines.append(f"| {'**average**' if seq == 'average' else seq} | " + " | ".join(cells) + " |")
    return lines


def _options_text(options: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def _summary(points: list[RDPoint], rows: list[dict[str, Any]], avg: list[dict[str, Any]],
             sequences: dict[str, dict[str, Any]], conditions: dict[str, Any], env: dict[str, Any]) -> str:
    seqs = list(sequences)
    c = conditions
    out = ["# RD evaluation: neurocodec vs x264 / x265", "",
           "## Conditions", "",
           f"- first {c['frames']} frames per sequence; "
           + ("only the first frame is intra" if c["intra_period"] == -1 else
              f"an intra (IDR) frame every {c['intra_period']} frames")
           + "; IPPP low-delay for every codec (no B-frames, no future references)",
           "- neurocodec " + ", ".join(f"model `{m['model']}` (weights {m['weight_hash']})" for m in c["models"])
           + f", qualities {c['qualities']}, device {env['device']}"
           + (f"; later models are also compared with `{c['models'][0]['model']}`" if len(c["models"]) > 1 else ""),
           f"- anchors through PyAV ({env['versions']['ffmpeg'].get('libavcodec', '?')} libavcodec), fed the same "
           "BT.709 limited-range 4:2:0 planes the metrics use; exact options per curve (`<crf>` varies):"]
    seen: dict[str, dict[str, str]] = {}
    for p in points:
        if p.codec != "neurocodec" and p.curve not in seen:
            seen[p.curve] = p.options["encoder_options"]
            crf = p.param.split("=", 1)[1]
            text = _options_text(seen[p.curve]).replace(f"crf={crf} ", "crf=<crf> ").replace(f"qp={crf} ", "qp=<qp> ")
            out.append(f"  - {p.curve}: `{text}`")
    padded = sorted({p.sequence for p in points if p.options.get("padded_to")})
    if padded:
        out.append(f"- odd frame sizes ({', '.join(padded)}): edge-padded to even for x264/x265 (4:2:0), "
                   "cropped after decoding; metrics on the original size")
    out += [f"- rate: {c['rate']}; quality: {c['sequence_quality']}; PSNR-YUV = (6 Y + U + V) / 8 of per-plane "
            "PSNRs (BT.709 4:2:0); MS-SSIM on RGB" + ("" if c["ms_ssim"] else " (skipped)"),
            "- BD-rate: PCHIP over log-rate on the common quality interval (eval/bdrate.py); negative = test needs "
            "fewer bits. † = curves overlap on less than 75 % of their range; average = mean over sequences",
            f"- machine: {env['machine']['cpu']} ({env['machine']['logical_cpus']} logical CPUs, torch threads "
            f"{env['machine']['torch_threads']}){', ' + env['machine']['gpu'] if 'gpu' in env['machine'] else ''}; "
            f"torch {env['versions']['torch']}, git {env['git']}, {env['date']}", "",
            "| sequence | source | coded size | frames | fps | provenance |", "|---|---|---|---:|---:|---|"]
    for name, m in sequences.items():
        size = "x".join(map(str, m["coded_size"])) + (" (downscaled)" if m["downscaled"] else "")
        out.append(f"| {name} | `{Path(m['source']).name}` | {size} | {m['frames']} | {m['fps']:g} | "
                   f"{m['provenance']} |")
    notes: dict[str, int] = {}
    for metric, key, unit, title in (
            ("psnr_yuv", "bd_rate", " %", "BD-rate, PSNR-YUV (6:1:1), % (negative: test saves bits)"),
            ("psnr_yuv", "bd_quality", " dB", "BD-PSNR, PSNR-YUV (6:1:1), dB (positive: test is better)"),
            ("psnr_rgb", "bd_rate", " %", "BD-rate, PSNR-RGB, %"),
            ("ms_ssim", "bd_rate", " %", "BD-rate, MS-SSIM (RGB), %")):
        if any(r["metric"] == metric for r in rows):
            out += ["", f"## {title}", "", *_bd_table(rows, avg, seqs, metric, key, unit, notes)]
    if notes:
        out += ["", "Why some values are n/a:", ""] + [f"- [{n}] {reason}" for reason, n in notes.items()]
    out += ["", "## RD points", "", "![average](rd_average.png)", ""]
    for name in seqs:
        out += [f"### {name}", "", f"![{name}](rd_{_safe(name)}.png)", "",
                "| curve | param | bpp | kbps | PSNR-YUV | PSNR-RGB | MS-SSIM | enc fps | dec fps | peak RSS enc MiB |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in (p for p in points if p.sequence == name):
            out.append(f"| {p.curve} | {p.param} | {p.bpp:.4f} | {p.kbps:.1f} | {_fmt(p.psnr_yuv)} | "
                       f"{_fmt(p.psnr_rgb)} | {_fmt(p.ms_ssim, 4)} | {_fmt(p.encode_fps, 1)} | "
                       f"{_fmt(p.decode_fps, 1)} | {_fmt(p.memory['encode']['peak_rss_mib'], 0)} |")
        out.append("")
    return "\n".join(out)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_all(out: Path, points: list[RDPoint], rows: list[dict[str, Any]], sequences: dict[str, dict[str, Any]],
              conditions: dict[str, Any], env: dict[str, Any]) -> None:
    """Write results.json, points.csv, rd_<sequence>.png, rd_average.png and summary.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    avg = average_bd(rows, len(sequences))
    data = {"conditions": conditions, "environment": env, "sequences": sequences,
            "bd": rows + avg, "points": points}
    (out / "results.json").write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    with open(out / "points.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*CSV_FIELDS, "encode_peak_rss_mib", "decode_peak_rss_mib"])
        for p in points:
            w.writerow([*(getattr(p, k) for k in CSV_FIELDS), p.memory["encode"].get("peak_rss_mib"),
                        p.memory["decode"].get("peak_rss_mib")])
    for name, meta in sequences.items():
        title = f"{name}: {meta['coded_size'][0]}x{meta['coded_size'][1]}, {meta['frames']} frames, " \
                f"intra period {conditions['intra_period']}"
        _save_plot(out / f"rd_{_safe(name)}.png", curves(p for p in points if p.sequence == name), title)
    _save_plot(out / "rd_average.png", average_curves(points),
               f"average of {len(sequences)} sequence(s): mean bpp and PSNR per rate parameter")
    (out / "summary.md").write_text(_summary(points, rows, avg, sequences, conditions, env) + "\n")
