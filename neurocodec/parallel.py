"""Frame-parallel entropy coding: rANS for several frames at once, in worker processes.

Why. rANS coding is serial within a stream, and CompressAI's coder holds
the GIL while it runs, so it uses one CPU core. Once the networks run on a
GPU it is most of a frame's time (86 % at 1080p on an H200). But parsing a
packet needs no reference frame: the table of every element depends on its
hyper-latent alone (:mod:`neurocodec.entropy`). So while the main process
reconstructs frame ``t``, it decodes the small hyper-latents of the next
frames and chooses their tables (on its own device, fast), and ``workers``
processes run the rANS decoding of their latents (:func:`decode_symbols`,
which needs only the shipped tables: the workers hold no model), like
FFmpeg's frame threads with the reconstruction kept in order. Throughput
grows with cores until the reconstruction is the limit; the latency of one
frame does not shrink.

Encoding is the mirror image: the main process runs the networks and codes
the hyper-latents, workers rANS-encode the latents (:func:`encode_symbols`),
and packets come out a few frames late (``Encoder.encode(None)`` flushes).

rANS coding is exact integer work, so a frame decodes to the same pixels
whether its symbols were decoded here or in a worker. Workers are spawned
(forking a process that runs CUDA or torch's thread pools is unsafe), so, as
with any spawned ``multiprocessing``, a script that uses them keeps its
top-level code under ``if __name__ == "__main__":``.

>>> with EntropyPool(workers=4) as pool:               # doctest: +SKIP
...     for frame in pool.decode(decoder, reader):   # uint8 [H, W, 3] tensors, in order
...         ...
...     encoder = Encoder(1920, 1080, device="cuda", pool=pool)
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from .codec import Decoder, payload_errors
from .container import Packet
from .entropy import Coded, Pending, decode_symbols, encode_symbols
from .errors import InputError, NeurocodecError
from .profiling import stage

__all__ = ["EntropyPool", "LOOKAHEAD"]

#: Frames in flight per worker: enough to keep every worker busy while the
#: main process waits on the oldest.
LOOKAHEAD = 2


def _start() -> None:
    torch.set_num_threads(1)  # one core per worker: the parallelism is across workers


class EntropyPool:
    """``workers`` processes that rANS-code latents for any :class:`Decoder` or ``Encoder``.

    Start-up costs each worker an interpreter (about a second): make one pool
    and keep it for many streams.
    """

    def __init__(self, workers: int):
        if workers < 1:
            raise InputError(f"an entropy pool needs at least 1 worker, got {workers}")
        self.workers = workers
        #: frames a coder keeps in flight: enough to keep every worker busy
        self.lookahead = LOOKAHEAD * workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start)
        # start every worker now, not on the first frames (which would stall behind their start-up)
        for future in [self._pool.submit(os.getpid) for _ in range(workers)]:
            future.result()

    def decode(self, decoder: Decoder, packets: Iterable[Packet]) -> Iterator[torch.Tensor]:
        """Frames of ``packets`` (uint8 [H, W, 3] on the decoder's device), in order, parsed ahead."""
        # a packet, then its tables and symbol futures, or the error its parse raised (raised in turn)
        pending: deque[tuple[Packet, tuple[Pending, ...] | NeurocodecError, list[Future]]] = deque()
        source = iter(packets)

        def submit() -> None:
            packet = next(source, None)
            if packet is None:
                return
            try:
                tables = decoder.parse_tables(packet)
            except NeurocodecError as e:
                pending.append((packet, e, []))
                return
            futures = [self._submit(decode_symbols, t.y_bytes, t.indexes) for t in tables]
            pending.append((packet, tables, futures))

        for _ in range(self.lookahead):
            submit()
        try:
            while pending:
                packet, tables, futures = pending.popleft()
                submit()
                if isinstance(tables, NeurocodecError):
                    raise tables
                with stage("entropy"), payload_errors(packet):  # what the reconstruction waits for
                    symbols = [self.result(packet.pts, f) for f in futures]
                yield decoder.decode_tensor(packet, tuple(t.complete(s) for t, s in zip(tables, symbols,
                                                                                        strict=True)))
        finally:
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()

    def encode_symbols(self, coded: Iterable[Coded]) -> list[Future]:
        """Start rANS-encoding the y streams of ``coded`` latents (futures of bytes, see :meth:`result`)."""
        return [self._submit(encode_symbols, c.symbols, c.indexes) for c in coded]

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        try:
            return self._pool.submit(fn, *args)
        except RuntimeError as e:  # shut down, or broken by a dead worker
            raise InputError(f"this entropy pool can take no more work ({e})") from e

    @staticmethod
    def result(pts: int, future: Future) -> Any:
        """A worker's result for frame ``pts``; a dead worker is a NeurocodecError that says why it may have died."""
        try:
            return future.result()
        except BrokenProcessPool as e:  # before payload_errors sees it: it is a RuntimeError
            raise NeurocodecError(
                f"frame {pts}: an entropy worker died ({e}). Workers start by importing the main "
                "module: a script's top-level code must be under `if __name__ == '__main__':`") from e

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EntropyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
