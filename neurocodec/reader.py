"""``neurocodec.open``: read a .ncv file's header, iterate its frames, seek.

Seeking jumps to the last I-frame at or before the target (found in the
stream's index, or by scanning the packets when a live or truncated stream
has none) and decodes forward from there, as every P-frame needs its
predecessor.
"""

from __future__ import annotations

import bisect
import os
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import torch

from .codec import Decoder
from .container import FrameType, Packet, StreamHeader, StreamReader
from .errors import InputError, VideoIOError
from .models import VideoModel
from .parallel import EntropyPool
from .profiling import stage

__all__ = ["Reader", "open"]

_open = open


class Reader:
    """A decoded view of one stream. Use as a context manager, or call :meth:`close`.

    >>> with neurocodec.open("clip.ncv") as r:          # doctest: +SKIP
    ...     print(r.header.width, r.header.height, len(r))
    ...     r.seek(40)
    ...     frame = r.read()        # uint8 [H, W, 3], frame 40
    """

    def __init__(self, source: str | os.PathLike | BinaryIO, *,
                 model: str | VideoModel | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32", entropy_workers: int = 0):
        if entropy_workers < 0:
            raise InputError(f"entropy_workers must be >= 0, got {entropy_workers}")
        self._entropy_workers = entropy_workers
        self._pool: EntropyPool | None = None
        if isinstance(source, (str, os.PathLike)):
            try:
                self._file: BinaryIO | None = _open(source, "rb")
            except OSError as e:
                raise VideoIOError(f"cannot read {source}: {e.strerror or e}") from e
            fileobj = self._file
        else:
            self._file, fileobj = None, source
        try:
            self._stream = StreamReader(fileobj)
        except BaseException:
            self.close()
            raise
        self.header: StreamHeader = self._stream.header
        self._model, self._device, self._precision = model, device, precision
        self._decoder: Decoder | None = None
        self._index: list[tuple[int, int]] | None = None
        self._next = 0  # frame number of the next packet

    @property
    def decoder(self) -> Decoder:
        """The decoder, created (and the model loaded) on first use."""
        if self._decoder is None:
            self._decoder = Decoder(self.header, model=self._model, device=self._device,
                                    precision=self._precision)
        return self._decoder

    def packets(self) -> Iterator[Packet]:
        """The remaining packets, undecoded."""
        while (packet := self._stream.read_packet()) is not None:
            self._next = packet.pts + 1
            yield packet

    def read(self) -> np.ndarray | None:
        """The next frame (uint8 [H, W, 3]), or None at the end of the stream."""
        packet = self._stream.read_packet()
        if packet is None:
            return None
        self._next = packet.pts + 1
        return self.decoder.decode(packet)

    def __iter__(self) -> Iterator[np.ndarray]:
        """The remaining frames; with ``entropy_workers``, parsed ahead in other processes."""
        if not self._entropy_workers:
            while (frame := self.read()) is not None:
                yield frame
            return
        if self._pool is None:
            self._pool = EntropyPool(self._entropy_workers)
        ahead: deque[tuple[int, int]] = deque()  # (frame number, offset) of packets read, not yet yielded

        def packets() -> Iterator[Packet]:
            while True:
                offset = self._stream.tell()
                if (packet := self._stream.read_packet()) is None:
                    return
                ahead.append((packet.pts, offset))
                yield packet

        try:
            for frame in self._pool.decode(self.decoder, packets()):
                self._next = ahead.popleft()[0] + 1
                with stage("convert"):
                    yield frame.cpu().numpy()
        finally:
            if ahead:  # stopped early: the next read starts after the last frame yielded
                self._next, offset = ahead[0]
                self._stream.seek(offset)

    def index(self) -> list[tuple[int, int]]:
        """(frame number, byte offset) of every I-frame: the stream's own index, or a scan."""
        if self._index is None:
            self._index = self._stream.index()
        if self._index is None:
            here, entries = self._stream.tell(), []
            while True:
                offset = self._stream.tell()
                packet = self._stream.read_packet()
                if packet is None:
                    break
                if packet.frame_type == FrameType.I:
                    entries.append((packet.pts, offset))
            self._stream.seek(here)
            self._index = entries
        return self._index

    def __len__(self) -> int:
        """Frame count: from the header when the encoder knew it, else by scanning."""
        if self.header.frame_count is not None:
            return self.header.frame_count
        here, count = self._stream.tell(), 0
        self._stream.seek(self._first_offset())
        while self._stream.read_packet() is not None:
            count += 1
        self._stream.seek(here)
        return count

    def _first_offset(self) -> int:
        index = self.index()
        return index[0][1] if index else self._stream.header_size

    def seek(self, frame: int) -> None:
        """Position so that the next :meth:`read` returns frame number ``frame``."""
        index = self.index()
        if frame < 0 or not index:
            raise InputError(f"cannot seek to frame {frame}")
        pos = bisect.bisect_right([pts for pts, _ in index], frame) - 1
        if pos < 0:
            raise InputError(f"no I-frame at or before frame {frame}")
        start, offset = index[pos]
        self._stream.seek(offset)
        self.decoder.reset()
        for _ in range(frame - start):
            if self.read() is None:
                raise InputError(f"frame {frame} is past the end of the stream")
        self._next = frame

    def tell(self) -> int:
        """Frame number of the next frame :meth:`read` returns."""
        return self._next

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(source: str | os.PathLike | BinaryIO, *, model: str | VideoModel | None = None,
         device: str | torch.device = "cpu", precision: str = "fp32", entropy_workers: int = 0) -> Reader:
    """Open a .ncv stream for reading (header at once; the model loads on first decode).

    ``entropy_workers``: processes that entropy-decode ahead while iterating
    (:mod:`neurocodec.parallel`); 0 decodes in this process only.
    """
    return Reader(source, model=model, device=device, precision=precision, entropy_workers=entropy_workers)
