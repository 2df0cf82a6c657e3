"""WAV files: the recorder's writer, the repair of a file left by a crash, the player's reader.

The writer rewrites the header's sizes at every flush, so a process killed at any moment leaves a
file that players open (at most the last flush's audio is missing). ``repair`` recomputes the sizes
from the file's length for a file whose last header write did not happen.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from services.media.g711 import Samples

RATE = 8000
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
HEADER_SIZE = _HEADER.size  # 44: RIFF, fmt (16 bytes of PCM format), the data chunk's header


class WavError(Exception):
    """A file the player cannot play: not a WAV, or a format it does not convert."""


def _header(channels: int, rate: int, data_size: int) -> bytes:
    block = channels * 2
    return _HEADER.pack(
        b"RIFF", 36 + data_size, b"WAVE", b"fmt ", 16, 1, channels, rate, rate * block, block, 16, b"data", data_size
    )


class WavWriter:
    """A 16-bit PCM WAV being written; its header always matches what was flushed."""

    def __init__(self, path: Path, channels: int = 2, rate: int = RATE):
        self.path = path
        self.channels = channels
        self.rate = rate
        self.frames = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(path, "w+b")  # noqa: SIM115 (kept open across flushes)
        self._file.write(_header(channels, rate, 0))
        self._file.flush()

    @property
    def frame_size(self) -> int:
        return self.channels * 2

    def write(self, interleaved: bytes) -> None:
        """Appends whole frames and rewrites the header's sizes, then hands both to the OS."""
        file = self._open()
        file.seek(HEADER_SIZE + self.frames * self.frame_size)
        file.write(interleaved)
        self.frames += len(interleaved) // self.frame_size
        self._write_sizes(file)

    def take_tail(self, frame: int) -> bytes:
        """Cuts the file at ``frame`` and returns the frames that were past it."""
        file = self._open()
        if frame >= self.frames:
            return b""
        file.seek(HEADER_SIZE + frame * self.frame_size)
        tail = file.read()
        file.truncate(HEADER_SIZE + frame * self.frame_size)
        self.frames = frame
        self._write_sizes(file)
        return tail

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def _open(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        return self._file

    def _write_sizes(self, file: BinaryIO) -> None:
        data_size = self.frames * self.frame_size
        file.seek(4)
        file.write(struct.pack("<I", 36 + data_size))
        file.seek(40)
        file.write(struct.pack("<I", data_size))
        file.flush()


def repair(path: Path) -> int:
    """Sets the header's sizes from the file's length (whole frames); returns the frame count.

    Only for files this module wrote (a 44-byte PCM header): anything else raises WavError.
    """
    with open(path, "r+b") as file:
        head = file.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise WavError(f"{path}: shorter than a WAV header")
        fields = _HEADER.unpack(head)
        if fields[0] != b"RIFF" or fields[2] != b"WAVE" or fields[3] != b"fmt " or fields[11] != b"data":
            raise WavError(f"{path}: not a WAV this recorder wrote")
        block = int(fields[9])
        size = file.seek(0, 2) - HEADER_SIZE
        frames = size // block
        file.truncate(HEADER_SIZE + frames * block)
        file.seek(4)
        file.write(struct.pack("<I", 36 + frames * block))
        file.seek(40)
        file.write(struct.pack("<I", frames * block))
    return frames


# Rates the player converts from; each is a whole or simple ratio of 8 kHz.
PLAYABLE_RATES = (8000, 16000, 44100, 48000)


def read_pcm(path: Path) -> Samples:
    """A WAV file as 8 kHz mono 16-bit samples (any 16-bit PCM mono or stereo file at 8, 16, 44.1 or
    48 kHz); raises WavError naming what is wrong with any other file."""
    try:
        with wave.open(str(path), "rb") as file:
            channels, width, rate = file.getnchannels(), file.getsampwidth(), file.getframerate()
            if width != 2:
                raise WavError(f"{path}: {8 * width}-bit samples; the player takes 16-bit PCM")
            if channels not in (1, 2):
                raise WavError(f"{path}: {channels} channels; the player takes mono or stereo")
            if rate not in PLAYABLE_RATES:
                raise WavError(f"{path}: {rate} Hz; the player takes {', '.join(map(str, PLAYABLE_RATES))} Hz")
            raw = file.readframes(file.getnframes())
    except (wave.Error, EOFError) as error:
        raise WavError(f"{path}: not a 16-bit PCM WAV ({error})") from error
    except OSError as error:
        raise WavError(f"{path}: {error.strerror or error}") from error
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    if channels == 2:
        samples = samples.reshape(-1, 2).mean(axis=1)
    if rate != RATE:
        samples = _resample(samples, rate)
    clipped: Samples = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    return clipped


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Down to 8 kHz: a windowed-sinc low-pass below 4 kHz, then linear interpolation."""
    ratio = rate / RATE
    taps = np.arange(-32, 33)
    cutoff = 0.45 / ratio  # of the input rate: a little under the new Nyquist frequency
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hamming(len(taps))
    filtered = np.convolve(samples, kernel / kernel.sum(), mode="same")
    positions = np.arange(0, len(samples) - 1, ratio)
    resampled: np.ndarray = np.interp(positions, np.arange(len(samples)), filtered)
    return resampled
