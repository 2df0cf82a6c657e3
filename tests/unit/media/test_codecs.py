"""G.711 tables against audioop (the ITU reference), RTP headers, WAV files: no processes."""

from __future__ import annotations

import struct
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest

from services.media import g711, rtp, wav

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

EVERY_CODE = bytes(range(256))
EVERY_SAMPLE = np.arange(65536, dtype=np.uint16).view(np.int16)


def test_decoding_matches_audioop_for_every_code() -> None:
    assert g711.decode(g711.PCMU, EVERY_CODE).tobytes() == audioop.ulaw2lin(EVERY_CODE, 2)
    assert g711.decode(g711.PCMA, EVERY_CODE).tobytes() == audioop.alaw2lin(EVERY_CODE, 2)


def test_encoding_matches_audioop_for_every_sample() -> None:
    assert g711.encode(g711.PCMU, EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE.tobytes(), 2)
    assert g711.encode(g711.PCMA, EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE.tobytes(), 2)


def test_transcoding_tables_match_audioop_through_linear() -> None:
    assert EVERY_CODE.translate(g711.ULAW_TO_ALAW) == audioop.lin2alaw(audioop.ulaw2lin(EVERY_CODE, 2), 2)
    assert EVERY_CODE.translate(g711.ALAW_TO_ULAW) == audioop.lin2ulaw(audioop.alaw2lin(EVERY_CODE, 2), 2)


def test_parse_skips_csrcs_extension_and_padding() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 0x80 | 8, 7, 1600, 42)
    packet = header + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"audio" + b"\x00\x00\x03"
    parsed = rtp.parse(packet)
    assert parsed == rtp.Packet(8, True, 7, 1600, 42, b"audio")
    assert rtp.parse(b"\x40" + bytes(11)) is None  # version 1
    assert rtp.parse(b"\x80\x00") is None


def test_the_writer_keeps_a_valid_header_and_repair_fixes_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "a.wav"
    writer = wav.WavWriter(path)
    writer.write(bytes(4 * 800))
    with wave.open(str(path)) as file:
        assert (file.getnchannels(), file.getframerate(), file.getnframes()) == (2, 8000, 800)
    with open(path, "ab") as file:  # frames written after the last header update (a kill)
        file.write(bytes(4 * 200 + 3))
    writer.close()
    assert wav.repair(path) == 1000
    with wave.open(str(path)) as file:
        assert file.getnframes() == 1000


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2), (44100, 1), (48000, 2)])
def test_the_reader_converts_to_8khz_mono(tmp_path: Path, rate: int, channels: int) -> None:
    t = np.arange(rate) / rate
    tone = np.round(8000 * np.sin(2 * np.pi * 500 * t)).astype("<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(np.repeat(tone, channels).tobytes())
    samples = wav.read_pcm(path)
    assert abs(len(samples) - 8000) <= 2
    spectrum = np.abs(np.fft.rfft(samples[:8000]))
    assert abs(np.fft.rfftfreq(len(samples[:8000]), 1 / 8000)[np.argmax(spectrum)] - 500) < 2
    assert 7000 < np.abs(samples[100:-100]).max() < 9000


def test_the_reader_names_what_it_cannot_play(tmp_path: Path) -> None:
    path = tmp_path / "eight-bit.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(1)
        file.setframerate(8000)
        file.writeframes(bytes(800))
    with pytest.raises(wav.WavError, match="8-bit"):
        wav.read_pcm(path)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(wav.WavError, match="not a 16-bit PCM WAV"):
        wav.read_pcm(tmp_path / "text.wav")


def test_the_shipped_music_on_hold_plays() -> None:
    from services.media.plane import MUSIC_ON_HOLD

    samples = wav.read_pcm(MUSIC_ON_HOLD)
    assert 3 * 8000 <= len(samples) <= 6 * 8000
    assert 3000 < np.abs(samples).max() < 20000
