"""The entropy coder's fixed integer tables, computed once and shipped as data.

Parsing a latent element needs two things that must be identical on every
device: which probability table codes it (an integer scale compared with
integer *scale bounds*) and the table itself (a 16-bit CDF of a discretized
Gaussian). Both are functions of :data:`SCALE_TABLE`, but evaluating them
takes ``exp`` and ``erfc``, whose last bits differ between CPUs, GPUs and
library versions, and a CDF value rounded the other way is a different
bitstream. So they are computed once, by ``python -m neurocodec.tables``,
stored in ``tables.safetensors`` beside this module, and only ever loaded.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["SCALE_TABLE", "SCALE_FRACTION_BITS", "CodingTables", "coding_tables"]

#: Gaussian scales the coder has tables for (log-spaced, as in CompressAI).
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64
SCALE_TABLE: list[float] = [
    math.exp(v)
    for v in torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS, dtype=torch.float64).tolist()
]
#: Fraction bits of the fixed-point activations (and output scales) of the exact
#: entropy-parameter path in :mod:`neurocodec.entropy`.
SCALE_FRACTION_BITS = 12

PATH = Path(__file__).with_name("tables.safetensors")


class CodingTables:
    """The shipped tables, as the rANS coder's Python lists (and the bounds as a tensor)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        #: bounds[i] = floor(SCALE_TABLE[i] * 2^SCALE_FRACTION_BITS): an integer scale
        #: s selects the first table i with s <= bounds[i].
        self.bounds: torch.Tensor = tensors["scale_bounds"].long()
        lengths = tensors["cdf_length"].int()
        flat = tensors["cdf"].int()
        #: One CDF per scale, as the rANS coder takes them (ragged, not zero-padded).
        self.rows: list[list[int]] = []
        start = 0
        for n in lengths.tolist():
            self.rows.append(flat[start : start + n].tolist())
            start += n
        self.cdf_length = lengths
        self.offset = tensors["offset"].int()
        self.lengths_list: list[int] = lengths.tolist()
        self.offsets_list: list[int] = self.offset.tolist()


@functools.cache
def coding_tables() -> CodingTables:
    """The tables every encoder and decoder uses (loaded once per process)."""
    return CodingTables(load_file(str(PATH)))


def compute() -> dict[str, torch.Tensor]:
    """Compute the tables on this machine (what ``python -m neurocodec.tables`` writes)."""
    from ._compat import GaussianConditional

    gaussian = GaussianConditional(None)
    gaussian.update_scale_table(SCALE_TABLE, force=True)
    lengths = gaussian._cdf_length.int()
    rows = [gaussian._quantized_cdf[i, :n] for i, n in enumerate(lengths.tolist())]
    bounds = [math.floor(s * 2**SCALE_FRACTION_BITS) for s in SCALE_TABLE]
    return {
        "scale_bounds": torch.tensor(bounds, dtype=torch.int64),
        "cdf": torch.cat(rows).int(),
        "cdf_length": lengths,
        "offset": gaussian._offset.int(),
    }


if __name__ == "__main__":
    save_file(compute(), str(PATH), metadata={"scale_fraction_bits": str(SCALE_FRACTION_BITS)})
    print(f"wrote {PATH}")
