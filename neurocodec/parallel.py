"""Frame-parallel parsing: entropy-decode packets ahead, in worker processes.

Why. rANS decoding is serial within a stream, and CompressAI's coder holds
the GIL while it runs, so it uses one CPU core. Once the networks run on a
GPU this is most of a frame's time (85 % at 1080p on an H200). But a
packet's parse needs no reference frame: the table choice depends on its
hyper-latent alone (:mod:`neurocodec.entropy`). So ``workers`` processes can
parse the next frames while the main process reconstructs this one, like
FFmpeg's frame threads with the reconstruction kept in order. Throughput
grows with cores until the reconstruction is the limit; the latency of one
frame does not shrink.

Parses are exact integer work, so a frame decodes to the same pixels whether
it was parsed here or in a worker. Workers are spawned (forking a process
that runs CUDA or torch's thread pools is unsafe), so, as with any spawned
``multiprocessing``, a script that uses them keeps its top-level code under
``if __name__ == "__main__":``.

>>> with ParsePool(model, workers=4) as pool:          # doctest: +SKIP
...     for frame in pool.decode(decoder, reader):   # uint8 [H, W, 3] tensors, in order
...         ...
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from .codec import Decoder
from .container import Packet, StreamHeader
from .entropy import Hyperprior, Parsed
from .errors import InputError, NeurocodecError
from .models import VideoModel
from .profiling import stage

__all__ = ["ParsePool"]

#: Packets in flight per worker: enough to keep every worker busy while the
#: main process waits on the oldest.
LOOKAHEAD = 2

# Worker-process state (set by _start).
_model: VideoModel | None = None
_decoders: dict[StreamHeader, Decoder] = {}


def _start(model: VideoModel) -> None:
    global _model
    torch.set_num_threads(1)  # one core per worker: the parallelism is across workers
    _model = model


def _parse(header: StreamHeader, packet: Packet) -> tuple[Parsed, ...]:
    decoder = _decoders.get(header)
    if decoder is None:
        _decoders.clear()
        decoder = _decoders[header] = Decoder(header, model=_model)
    # the exact hyper features are large (float64 at latent size): cheaper to recompute than to send
    return tuple(p._replace(hyper=None) for p in decoder.parse(packet))


class ParsePool:
    """``workers`` processes that entropy-decode packets for decoders of ``model``.

    Start-up costs each worker an interpreter and a copy of the model (about
    a second): make one pool and keep it for many streams.
    """

    def __init__(self, model: VideoModel, workers: int):
        if workers < 1:
            raise InputError(f"a parse pool needs at least 1 worker, got {workers}")
        cpu_model = copy.deepcopy(model).cpu()
        for m in cpu_model.modules():
            if isinstance(m, Hyperprior):
                m._exact = None  # device-bound caches; rebuilt on the worker's CPU
        self.workers = workers
        # spawn, not fork: forking a process that has started CUDA or torch's thread pools is unsafe
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start, initargs=(cpu_model,))
        # start every worker now, not on the first frames (which would stall behind their start-up)
        for future in [self._pool.submit(os.getpid) for _ in range(workers)]:
            future.result()

    def decode(self, decoder: Decoder, packets: Iterable[Packet]) -> Iterator[torch.Tensor]:
        """Frames of ``packets`` (uint8 [H, W, 3] on the decoder's device), in order, parsed ahead."""
        pending: deque[tuple[Packet, Future]] = deque()
        source = iter(packets)

        def submit() -> None:
            packet = next(source, None)
            if packet is not None:
                pending.append((packet, self._pool.submit(_parse, decoder.header, packet)))

        for _ in range(LOOKAHEAD * self.workers):
            submit()
        try:
            while pending:
                packet, future = pending.popleft()
                submit()
                with stage("entropy"):  # what the reconstruction waits for
                    try:
                        parsed = future.result()
                    except BrokenProcessPool as e:
                        raise NeurocodecError(
                            f"frame {packet.pts}: a parse worker died ({e}). Workers start by importing "
                            "the main module: a script's top-level code must be under "
                            "`if __name__ == '__main__':`") from e
                yield decoder.decode_tensor(packet, parsed)
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
