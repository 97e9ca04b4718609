"""Where a frame's time goes: opt-in stage timing inside the encoder and decoder.

The codec marks its non-network work with :func:`stage` (``entropy``: rANS
coding and the symbol lists it needs; ``exact``: the integer
entropy-parameter path; ``convert``: frame <-> tensor conversion; ``search``:
the encoder's block-matching motion search). Outside a
:func:`profile` block a mark costs one context-variable lookup; inside, each
marked span is timed, synchronising the GPU first so that queued kernels are
charged to the stage that launched them.

>>> with profile(device) as p:          # doctest: +SKIP
...     decoder.decode(packet)
>>> p.totals                            # {"entropy": 0.004, "exact": 0.002, ...} seconds
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

__all__ = ["STAGES", "Profile", "profile", "stage"]

#: The stages the codec marks; the rest of a frame's time is network work.
STAGES = ("entropy", "exact", "convert", "search")

_active: ContextVar[Profile | None] = ContextVar("neurocodec_profile", default=None)


class Profile:
    """Seconds spent per stage since the last :meth:`reset`."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.totals: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def reset(self) -> None:
        self.totals = dict.fromkeys(STAGES, 0.0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@contextmanager
def profile(device: torch.device | str = "cpu") -> Iterator[Profile]:
    """Time the codec's marked stages on this thread while the block runs."""
    p = Profile(device)
    token = _active.set(p)
    try:
        yield p
    finally:
        _active.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a span of codec work as stage ``name`` (timed only inside :func:`profile`)."""
    p = _active.get()
    if p is None:
        yield
        return
    p.sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        p.sync()
        p.totals[name] += time.perf_counter() - t0
