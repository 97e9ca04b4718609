"""neurocodec: a learned video codec you can actually use.

>>> import neurocodec
>>> data = neurocodec.encode("in.mp4", quality=0.5)          # doctest: +SKIP
>>> frames = neurocodec.decode(data)     # uint8 [T, H, W, 3]  # doctest: +SKIP
>>> with neurocodec.open("clip.ncv") as r:                   # doctest: +SKIP
...     r.seek(40); frame = r.read()

Streaming: :class:`Encoder` (frame in, packets out, ``None`` flushes) and
:class:`Decoder` (packet in, frame out); :class:`StreamWriter` and
:class:`StreamReader` put packets into and take them out of .ncv files.
"""

from .codec import Decoder, Encoder, decode, encode
from .container import FrameType, Packet, StreamHeader, StreamReader, StreamWriter
from .errors import BitstreamError, InputError, ModelMismatchError, NeurocodecError, VideoIOError
from .reader import Reader, open
from .zoo import DEFAULT_MODEL, available_models, load_model

__version__ = "0.1.0"

__all__ = [
    "encode",
    "decode",
    "open",
    "Encoder",
    "Decoder",
    "Reader",
    "load_model",
    "available_models",
    "DEFAULT_MODEL",
    "StreamHeader",
    "Packet",
    "FrameType",
    "StreamReader",
    "StreamWriter",
    "NeurocodecError",
    "BitstreamError",
    "ModelMismatchError",
    "InputError",
    "VideoIOError",
    "__version__",
]
