"""Writes services/media/assets/hold.wav, the music on hold shipped with the product.

Four seconds, 8 kHz mono 16-bit: a soft arpeggio over C, A minor, F and G (one chord a second),
each note a sine with a little second harmonic and a bell-like decay, kept well under full scale
and below 3.4 kHz so that G.711 carries it cleanly. Deterministic: run it again, get the same file.

    python scripts/make_hold_music.py [output.wav]
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np

RATE = 8000
CHORDS = [  # MIDI notes, low to high
    [48, 55, 60, 64, 67],  # C
    [45, 52, 57, 60, 64],  # A minor
    [41, 48, 53, 57, 60],  # F
    [43, 50, 55, 59, 62],  # G
]
NOTE_SECONDS = 0.25
RING_SECONDS = 1.2
PEAK = 0.35  # of full scale


def frequency(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def tone(note: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    f = frequency(note)
    wave_ = np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)
    attack = np.minimum(t / 0.01, 1.0)
    note_: np.ndarray = wave_ * attack * np.exp(-t * 3.0)
    return note_


def render() -> np.ndarray:
    total = np.zeros(int(len(CHORDS) * 4 * NOTE_SECONDS * RATE) + int(RING_SECONDS * RATE))
    start = 0
    for chord in CHORDS:
        for note in [chord[0], chord[2], chord[3], chord[4]]:  # bass, then up the chord
            sound = tone(note, RING_SECONDS)
            total[start : start + len(sound)] += sound
            start += int(NOTE_SECONDS * RATE)
    # The last notes' ring folds back onto the start, so the file loops without a click.
    length = start
    total[: len(total) - length] += total[length:]
    music = total[:length]
    samples: np.ndarray = np.round(music / np.abs(music).max() * PEAK * 32767).astype("<i2")
    return samples


def main() -> None:
    path = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "services/media/assets/hold.wav"
    )
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(render().tobytes())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
