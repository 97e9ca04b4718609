"""Encoder-side latent refinement: better rate-distortion, same decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import neurocodec
from eval.drift import coded_with_reconstructions
from neurocodec import InputError, StreamReader
from neurocodec.metrics import bits_per_pixel
from neurocodec.synthetic import demo_clip


@pytest.fixture(scope="module")
def starter():
    """The shipped model: refinement needs a trained decoder to have something to find."""
    return neurocodec.load_model("nc-starter")


@pytest.fixture(scope="module")
def frames():
    """Three frames of the demo's photograph: real image detail, where the analysis transform's guess still
    leaves something to find (on the smooth synthetic pattern the shipped weights' guess is already near the best)."""
    return demo_clip(160, 96, 3)


def _coded(model, clip, refine: int) -> tuple[bytes, list[np.ndarray]]:
    """The stream and the encoder's own reconstructions."""
    enc = neurocodec.Encoder(clip.shape[2], clip.shape[1], model=model, quality=0.5, gop=-1, refine=refine)
    return coded_with_reconstructions(enc, clip)


def _rd_loss(model, clip, data: bytes) -> float:
    """The training objective, measured: lambda * 255^2 * MSE of the decoded frames + bits per pixel."""
    decoded = neurocodec.decode(data, model=model)
    mse = np.mean((decoded.astype(np.float64) - clip) ** 2) / 255.0**2
    lmbda = model.lmbda(torch.tensor(0.5)).item()
    return lmbda * 255.0**2 * mse + bits_per_pixel(len(data), clip.shape[2], clip.shape[1], len(clip))


def test_refinement_lowers_the_measured_rate_distortion_loss(starter, frames):
    # The gain depends on the weights and the content; docs/encoder.md lists it per weights file.
    plain, _ = _coded(starter, frames, 0)
    refined, _ = _coded(starter, frames, 8)
    assert _rd_loss(starter, frames, refined) < 0.995 * _rd_loss(starter, frames, plain)


def test_any_decoder_decodes_a_refined_stream_to_the_encoders_reconstruction(starter, frames):
    data, recon = _coded(starter, frames, 3)
    assert data != _coded(starter, frames, 0)[0]
    reader = StreamReader(io.BytesIO(data))
    dec = neurocodec.Decoder(reader.header, model=starter)
    for packet, expected in zip(reader, recon, strict=True):
        np.testing.assert_array_equal(dec.decode(packet), expected)


def test_negative_refinement_is_an_input_error(tiny_model):
    with pytest.raises(InputError, match="refine"):
        neurocodec.Encoder(8, 8, model=tiny_model, refine=-1)
