"""The ``neurocodec`` command: encode, decode, info, demo, models.

User mistakes (missing files, bad streams, bad options) print one line to
stderr and exit 1; outputs are written atomically, so an interrupted or
failed command never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import codec, io, metrics, zoo
from .errors import InputError, NeurocodecError
from .reader import open as open_stream
from .synthetic import demo_clip

app = typer.Typer(
    help="neurocodec: a learned video codec. Encode any video PyAV reads to .ncv and back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Device = Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")]
Precision = Annotated[str, typer.Option(
    help="Arithmetic of the transforms: fp32, bf16 (faster on CPUs with bfloat16 support) or fp16 (GPUs). "
         "Any precision decodes any stream.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", "-y", help="Replace OUTPUT if it exists.")]
EntropyWorkers = Annotated[int, typer.Option(
    min=0, help="Processes that run the rANS coding of some frames while the networks work on others "
                "(pays with a GPU and spare CPU cores; same bytes, same frames).")]


@contextmanager
def _progress(label: str, total: int | None) -> Iterator:
    """A rich progress bar on stderr; yields an ``advance(n)`` callback."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists (use -y/--overwrite to replace it)")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")


@app.command()
def encode(
    input: Annotated[Path, typer.Argument(help="Any video PyAV reads (mp4, mkv, avi, y4m, ...).")],
    output: Annotated[Path, typer.Argument(help="The .ncv stream to write.")],
    quality: Annotated[float, typer.Option("--quality", "-q", min=0.0, max=1.0,
                                           help="0 = smallest file, 1 = best quality.")] = 0.5,
    gop: Annotated[int, typer.Option(help="Intra period in frames; -1: only the first frame is intra.")] = 32,
    frames: Annotated[int | None, typer.Option("--frames", "-n", min=1, help="Encode only the first N frames.")] = None,
    model: Annotated[str, typer.Option(help="Registered model name or a .safetensors file.")] = zoo.DEFAULT_MODEL,
    device: Device = "cpu",
    precision: Precision = "fp32",
    entropy_workers: EntropyWorkers = 0,
    refine: Annotated[int, typer.Option(
        min=0, help="Optimise each frame's latent for N steps before coding: a lower rate-distortion loss per "
                    "frame (the bits it saves depend on the weights: the README measures them), much slower "
                    "encoding (an offline preset); any decoder decodes the stream.")] = 0,
    p_offsets: Annotated[str, typer.Option(
        help="Quality added to successive P-frames, cyclically after each I-frame (comma-separated; "
             "0 codes every frame at --quality).")] = codec.offsets_text(codec.P_OFFSETS),
    overwrite: Overwrite = False,
) -> None:
    """Encode a video file to a .ncv stream."""
    _check_output(output, overwrite)
    if gop == 0 or gop < -1:
        raise InputError("--gop must be a positive frame count or -1")
    offsets = codec.check_offsets(p_offsets)
    info = io.probe(input)
    total = min(info.frame_count or frames or 0, frames or 10**9) or None
    count = 0

    def advance_and_count(n: int = 1) -> None:
        nonlocal count
        count += n
        advance(n)

    t0 = time.perf_counter()
    with _progress("encoding", total) as advance:
        codec.encode(input, output, model=model, quality=quality, gop=gop, max_frames=frames,
                     device=device, precision=precision, progress=advance_and_count,
                     entropy_workers=entropy_workers, refine=refine, p_offsets=offsets)
    seconds, nbytes = time.perf_counter() - t0, output.stat().st_size
    bpp = metrics.bits_per_pixel(nbytes, info.width, info.height, count)
    out.print(f"encoded {count} frames {info.width}x{info.height} to {output}: {nbytes:,} bytes, "
              f"{nbytes * 8 * float(info.fps) / count / 1000:.1f} kbps, {bpp:.4f} bpp, "
              f"{count / seconds:.2f} fps")


@app.command()
def decode(
    input: Annotated[Path, typer.Argument(help="A .ncv stream.")],
    output: Annotated[Path, typer.Argument(help="OUT.mp4, OUT.mkv, OUT.mov, OUT.y4m, or a folder for PNGs.")],
    model: Annotated[str | None, typer.Option(
        help="Weights to decode with (name or .safetensors); default: the model the stream names.")] = None,
    device: Device = "cpu",
    precision: Precision = "fp32",
    entropy_workers: EntropyWorkers = 0,
    overwrite: Overwrite = False,
) -> None:
    """Decode a .ncv stream to a video file or a folder of PNG frames."""
    io.output_kind(output)
    _check_output(output, overwrite)
    t0 = time.perf_counter()
    with open_stream(input, model=model, device=device, precision=precision,
                     entropy_workers=entropy_workers) as reader:
        h = reader.header
        with _progress("decoding", h.frame_count) as advance, \
                io.VideoWriter(output, h.width, h.height, h.fps) as writer:
            for frame in reader:
                writer.write(frame)
                advance()
        n = writer.frames_written
    dt = time.perf_counter() - t0
    out.print(f"decoded {n} frames to {output} in {dt:.1f} s ({n / dt:.2f} fps)")


@app.command()
def info(
    input: Annotated[Path, typer.Argument(help="A .ncv stream.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a stream's header, size, bitrate and frame types (without decoding)."""
    with open_stream(input) as reader:
        h = reader.header
        sizes, qualities = [], []
        for p in reader.packets():
            sizes.append((p.frame_type.name, sum(map(len, p.streams))))
            qualities.append(p.quality)
        index = reader.index()
    n = len(sizes)
    nbytes = input.stat().st_size
    report = {
        "file": str(input), "bytes": nbytes, "model": h.model, "weight_hash": h.weight_hash,
        "width": h.width, "height": h.height, "pix_fmt": h.pix_fmt,
        "fps": f"{h.fps.numerator}/{h.fps.denominator}", "gop": h.gop, "quality": round(h.quality, 4),
        "frame_quality": [round(min(qualities), 4), round(max(qualities), 4)] if qualities else None,
        "frames": n, "i_frames": sum(t == "I" for t, _ in sizes), "indexed": bool(index),
        "kbps": round(nbytes * 8 * float(h.fps) / max(n, 1) / 1000, 2),
        "bpp": round(metrics.bits_per_pixel(nbytes, h.width, h.height, max(n, 1)), 5),
        "mean_i_bytes": _mean([s for t, s in sizes if t == "I"]),
        "mean_p_bytes": _mean([s for t, s in sizes if t == "P"]),
    }
    if as_json:
        print(json.dumps(report, indent=1))
        return
    table = Table(show_header=False, box=None)
    for key, value in report.items():
        table.add_row(key, str(value))
    out.print(table)


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


@app.command()
def demo(
    input: Annotated[Path | None, typer.Argument(help="A real video to transcode; default: a built-in clip.")] = None,
    frames: Annotated[int, typer.Option("--frames", "-n", min=1)] = 32,
    quality: Annotated[float, typer.Option("--quality", "-q", min=0.0, max=1.0)] = 0.5,
    gop: Annotated[int, typer.Option(help="Intra period; -1: only the first frame is intra.")] = 32,
    model: Annotated[str, typer.Option(help="Registered model name or a .safetensors file.")] = zoo.DEFAULT_MODEL,
    save: Annotated[Path | None, typer.Option(help="Also write the decoded video here (e.g. out.mp4).")] = None,
    device: Device = "cpu",
    precision: Precision = "fp32",
) -> None:
    """Transcode a short clip through neurocodec; print bitrate, PSNR and speed."""
    if input is None:
        clip = demo_clip(640, 360, frames)
        source = "built-in clip (matplotlib's sample photo, panned and zoomed, with a moving disc)"
        fps = 30.0
    else:
        clip = np.stack(list(io.read_frames(input, max_frames=frames)))
        source, fps = str(input), io.probe(input).fps
    n, height, width = clip.shape[:3]
    out.print(f"[bold]neurocodec demo[/]: {source}\n  {width}x{height}, {n} frames, "
              f"model {model}, quality {quality}, gop {gop}")
    enc_model = zoo.load_model(model, device=device)  # load once, outside the timings
    t0 = time.perf_counter()
    with _progress("encoding", n) as advance:
        data = codec.encode(clip, model=enc_model, quality=quality, gop=gop, fps=fps,
                            device=device, precision=precision, progress=advance)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = codec.decode(data, model=enc_model, device=device, precision=precision)
    t_dec = time.perf_counter() - t0
    if save is not None:
        io.write_video(save, decoded, fps)
    psnr = np.mean([metrics.psnr(a, b) for a, b in zip(clip, decoded, strict=True)])
    psnr_yuv = np.mean([metrics.psnr_yuv420(a, b)["yuv"] for a, b in zip(clip, decoded, strict=True)])
    bpp = metrics.bits_per_pixel(len(data), width, height, n)
    out.print(f"  size     {len(data):,} bytes = {len(data) * 8 * float(fps) / n / 1000:.1f} kbps "
              f"at {float(fps):.3g} fps, "
              f"{bpp:.4f} bits per pixel")
    out.print(f"  PSNR     {psnr:.2f} dB RGB, {psnr_yuv:.2f} dB YUV420 (BT.709, 6:1:1)")
    out.print(f"  speed    encode {n / t_enc:.2f} fps, decode {n / t_dec:.2f} fps ({device}, {precision})")
    if save is not None:
        out.print(f"  decoded video written to {save}")


@app.command()
def models() -> None:
    """List the registered models."""
    for name, description in zoo.available_models().items():
        mark = " (default)" if name == zoo.DEFAULT_MODEL else ""
        out.print(f"[bold]{name}[/]{mark}: {description}")


def main() -> None:
    """Entry point: run the app, turning neurocodec errors into one line and exit 1, and
    warnings into one line each."""
    warnings.showwarning = lambda message, *_: err.print(f"[yellow]warning:[/] {message}", highlight=False)
    try:
        app()
    except NeurocodecError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
