"""G.711 (PCMU, μ-law; PCMA, A-law) as lookup tables, bit-exact with the ITU reference (and audioop).

Decoding is a 256-entry table indexed by the code byte; encoding a 65536-entry table indexed by the
16-bit sample as unsigned. Over one second of audio a numpy lookup costs about 0.5 µs per 20 ms
packet, so the recorder decodes whole batches, never packet by packet. Transcoding between the two
laws (a leg that offered only the other one) is one ``bytes.translate`` per packet.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

PCMU = "PCMU"
PCMA = "PCMA"
TELEPHONE_EVENT = "telephone-event"
LAWS = (PCMU, PCMA)

Samples = npt.NDArray[np.int16]


def _ulaw_decode_table() -> Samples:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_decode_table() -> Samples:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    magnitude = (code & 0x0F) << 4
    magnitude = np.where(segment == 0, magnitude + 8, magnitude + 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


# Where each law's segments end (the reference's seg_uend on 14-bit, seg_aend on 13-bit samples).
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    sample = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32) >> 2
    mask = np.where(sample < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(sample), 8159) + (0x84 >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left")
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    table: npt.NDArray[np.uint8] = (code ^ mask).astype(np.uint8)
    return table


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    sample = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32) >> 3
    mask = np.where(sample >= 0, 0xD5, 0x55)
    magnitude = np.where(sample >= 0, sample, -sample - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    table: npt.NDArray[np.uint8] = (code ^ mask).astype(np.uint8)
    return table


DECODE: dict[str, Samples] = {PCMU: _ulaw_decode_table(), PCMA: _alaw_decode_table()}
ENCODE: dict[str, npt.NDArray[np.uint8]] = {PCMU: _ulaw_encode_table(), PCMA: _alaw_encode_table()}

# μ-law to A-law and back through the linear value, as the reference transcodes.
ULAW_TO_ALAW = ENCODE[PCMA][DECODE[PCMU].view(np.uint16)].tobytes()
ALAW_TO_ULAW = ENCODE[PCMU][DECODE[PCMA].view(np.uint16)].tobytes()
TRANSCODE: dict[tuple[str, str], bytes] = {(PCMU, PCMA): ULAW_TO_ALAW, (PCMA, PCMU): ALAW_TO_ULAW}

# The code of a zero sample: what silence sounds like in each law.
SILENCE = {PCMU: 0xFF, PCMA: 0xD5}


def decode(law: str, payload: bytes) -> Samples:
    """16-bit linear samples of a G.711 payload."""
    return DECODE[law][np.frombuffer(payload, dtype=np.uint8)]


def encode(law: str, samples: Samples) -> bytes:
    """The G.711 payload of 16-bit linear samples."""
    return ENCODE[law][samples.astype(np.int16).view(np.uint16)].tobytes()
