"""A built-in, deterministic corpus of music-like clips in ten genres, for demos, tests and benchmarks.

The corpus is a folder-per-genre tree in GTZAN's layout, ``OUT/<genre>/<genre>.000NN.<ext>``, with GTZAN's
ten genre names. Every clip is synthesised from a *recipe* (:data:`RECIPES`) with numpy alone: note and drum
events are laid out on a tempo grid (loops over events), and each event is rendered vectorised (band-limited
wavetables, exponential envelopes, FFT-domain filters). Each clip's random generator is derived from
``(seed, genre name, clip index)``, so the output does not depend on the worker count or on which other
genres are generated.

A recipe fixes three things that a genre classifier can learn:

* **rhythm** -- tempo range, swing (8th or 16th), and one-bar drum patterns of kick / snare / closed and
  open hi-hat / ride, synthesised per clip (pitch-swept sine kick, noise-plus-tone snare, high-passed noise
  cymbals, with randomised pitches and decays);
* **harmony** -- mode, chord qualities and progressions, and how chords are played (held pads, arpeggios,
  strums, off-beat skanks, stabs, power-chord chugs, jazz comping) with a bass line style (walking, root,
  root-fifth "boom-chick", octaves, long 808 sub notes, syncopated riff) and an optional melody;
* **timbre** -- harmonic profile per instrument (piano, strings, organ, guitars, sax, synths, sub-bass),
  distortion / clipping, filtering and mix levels.

The recipes:

============ ========== ==============================================================================
genre        tempo BPM  character
============ ========== ==============================================================================
blues        70-125     12-bar dominant-7th progression, triplet shuffle, walking bass, organ comping,
                        blues-scale guitar melody
classical    60-115     major/minor triad progressions as piano arpeggios (Alberti / broken chords),
                        string pads and cello bass, legato violin melody with vibrato, no drums
country      95-150     I-IV-V major triads, train beat, root-fifth "boom-chick" bass, bright twangy
                        strummed guitar on the off-beats, fiddle melody
disco        110-132    four-on-the-floor kick, open hi-hat on every off-beat, 8th/16th closed hats,
                        octave-jumping bass, minor-7th stabs and string pads
hiphop       70-100     slow swung 16th beats, syncopated kick, very loud long 808 sub-bass, dark
                        low-passed minor-7th/9th keys, sparse bell melody
jazz         100-200    ii-V-I with 7th/9th/13th extensions, swung ride cymbal, brushed snare, walking
                        bass, irregular piano comping, sax-like melody
metal        130-210    distorted power chords in 16th/8th chugs, double-kick, phrygian/minor
                        progressions, hard clipping
pop          92-128     I-V-vi-IV style progressions with add9s, straight 8ths, synth pad and plucks,
                        square-ish lead melody
reggae       62-92      one-drop / steppers beats, off-beat skank chord stabs, heavy syncopated bass
                        riff, sparse melodica
rock         105-160    I-bVII-IV / I-IV-V progressions, driving straight 8ths, overdriven guitar
                        strums, root-8th bass
============ ========== ==============================================================================

Per clip the key, tempo (within the genre's range), swing amount, drum-kit parameters, pattern choice,
progression, mix levels and the panning are random, and with probability ``overlap`` (default 0.15) per
part a clip borrows its drums, bass, chords or melody from another genre (played in its own tempo, key and
progression), so genres overlap the way real ones do. Two nuisances are drawn from the *same* distribution
for every genre so no genre is recognisable from one global statistic: the overall loudness (a target RMS,
log-uniform in [-30, -14] dBFS) and a "mastering EQ" (random spectral tilt, low-pass and high-pass corners)
that spreads the spectral centroid over overlapping ranges. ``tests/tools/test_make_synthetic.py`` checks
that a classifier on ``[RMS, spectral centroid]`` stays far below one on richer features (MFCC, chroma,
tempogram statistics).

Library API: :func:`generate_clip` (one clip as an array) and :func:`make_corpus` (a whole tree on disk,
in parallel); ``python tools/make_synthetic.py --help`` is the command line (:func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

GENRES: tuple[str, ...] = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)

# extension -> (soundfile format, subtype)
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
# MPEG-1/2/2.5 layer III sample rates (Hz); LAME refuses anything else.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

OVERLAP = (
    0.15  # default probability that a clip borrows one part (drums, bass, chords, melody) from another genre
)
_TABLE_SIZE = 4096  # samples per wavetable cycle
_STEPS_PER_BEAT = 4  # the event grid is 16th notes in 4/4

# ----------------------------------------------------------------------------------------------------------
# musical vocabulary

CHORDS: dict[str, tuple[int, ...]] = {  # semitones above the chord root
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "5": (0, 7, 12),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10),
    "9": (0, 4, 10, 14),
    "13": (0, 4, 10, 14, 21),
    "maj9": (0, 4, 11, 14),
    "m9": (0, 3, 10, 14),
    "add9": (0, 4, 7, 14),
}

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "major_penta": (0, 2, 4, 7, 9),
    "minor_penta": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}


def _profile(k: int, slope: float, odd_only: bool = False, pluck: float = 0.0) -> tuple[float, ...]:
    """Harmonic amplitudes ``1/h**slope`` for h = 1..k (optionally odd-only, optionally a pluck-position comb)."""
    h = np.arange(1, k + 1, dtype=np.float64)
    a = h**-slope
    if odd_only:
        a[1::2] *= 0.05
    if pluck > 0:
        a *= 0.25 + np.abs(np.sin(np.pi * h * pluck))
    return tuple(float(v) for v in a / a.max())


# Harmonic profiles (amplitudes of harmonics 1..K) -- the timbre of each instrument.
PROFILES: dict[str, tuple[float, ...]] = {
    "sine": (1.0,),
    "sub": (1.0, 0.12, 0.04),
    "bass": (1.0, 0.55, 0.3, 0.18, 0.1, 0.06),
    "fingered_bass": (1.0, 0.7, 0.45, 0.3, 0.2, 0.12, 0.08, 0.05),
    "piano": _profile(14, 1.4, pluck=0.12),
    "epiano": (1.0, 0.35, 0.12, 0.25, 0.05, 0.04, 0.08),
    "strings": _profile(18, 1.0),
    "organ": (1.0, 0.8, 0.6, 0.45, 0.0, 0.35, 0.0, 0.3, 0.0, 0.0, 0.0, 0.15),
    "guitar": _profile(16, 1.2, pluck=0.18),
    "twang": _profile(24, 0.8, pluck=0.1),
    "dist_guitar": _profile(20, 0.7),
    "sax": (1.0, 0.55, 0.85, 0.4, 0.6, 0.3, 0.35, 0.2, 0.2, 0.12, 0.1, 0.06),
    "square": _profile(15, 1.0, odd_only=True),
    "saw": _profile(20, 1.0),
    "flute": (1.0, 0.25, 0.1, 0.04),
    "bell": (1.0, 0.0, 0.4, 0.0, 0.25, 0.0, 0.0, 0.15),
    "melodica": (1.0, 0.6, 0.5, 0.35, 0.3, 0.2, 0.15, 0.1),
}


@dataclass(frozen=True)
class Voice:
    """How one pitched part is played: style, instrument and envelope.

    ``style`` selects the event generator (see ``_CHORD_STYLES`` / ``_BASS_STYLES`` / ``_lead_events``);
    ``octave`` is the MIDI octave of the part's root; times are in seconds.
    """

    style: str
    profile: str
    octave: int = 4
    level_db: float = 0.0
    attack: float = 0.005
    decay: float = 0.4  # s, exponential decay time constant towards ``sustain``
    sustain: float = 0.3
    release: float = 0.05
    drive: float = 0.0  # tanh distortion drive (0: clean)
    lowpass: float = 0.0  # Hz (0: none)
    highpass: float = 0.0  # Hz (0: none)
    vibrato: float = 0.0  # relative depth of a 5.5 Hz vibrato
    steps: str = ""  # 16-step hit mask for rhythmic styles ('x' hit, 'o' soft hit, '.' rest)
    density: float = 0.7  # melody: probability of a note per slot
    slot: int = 2  # melody: slot length in 16th steps
    scale: str = "major"


@dataclass(frozen=True)
class Kit:
    """Drum-kit ranges; each value is a (low, high) range sampled per clip."""

    kick_pitch: tuple[float, float] = (48.0, 60.0)  # Hz, end of the pitch sweep
    kick_decay: tuple[float, float] = (0.12, 0.25)  # s
    snare_tone: tuple[float, float] = (170.0, 230.0)  # Hz
    snare_decay: tuple[float, float] = (0.08, 0.16)  # s
    snare_noise: tuple[float, float] = (0.6, 0.9)  # noise share of the snare
    hat_decay: tuple[float, float] = (0.02, 0.05)  # s
    hat_cutoff: tuple[float, float] = (6000.0, 8500.0)  # Hz, high-pass corner of cymbal noise
    level_db: float = 0.0


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one genre; sampled per clip by :func:`generate_clip`."""

    tempo: tuple[float, float]  # BPM range
    mode_tonic: tuple[int, int]  # MIDI range of the tonic (key drawn uniformly in it)
    progressions: tuple[tuple[tuple[int, str], ...], ...]  # alternatives; each bar: (root semitones, quality)
    chords: tuple[Voice, ...]
    bass: Voice | None
    lead: Voice | None = None
    drums: tuple[dict[str, str], ...] = ()  # alternative one-bar patterns, instrument -> 16-step mask
    kit: Kit = field(default_factory=Kit)
    swing8: tuple[float, float] = (0.0, 0.0)  # delay of off-beat 8ths, fraction of an 8th (1/3: triplets)
    swing16: tuple[float, float] = (0.0, 0.0)  # delay of off-beat 16ths, fraction of a 16th
    chords_per_bar: int = 1
    crash_every: int = 0  # bars between crash cymbals (0: never)
    clip_drive: float = 0.0  # master saturation drive (0: clean)
    timing_jitter: float = 0.004  # s, std of human timing deviations


_STRAIGHT_HATS = "x.x.x.x.x.x.x.x."

RECIPES: dict[str, Recipe] = {
    "blues": Recipe(
        tempo=(70, 125),
        mode_tonic=(40, 47),
        progressions=(
            tuple(
                [(0, "7")] * 4 + [(5, "7")] * 2 + [(0, "7")] * 2 + [(7, "7"), (5, "7"), (0, "7"), (7, "7")]
            ),
            tuple(
                [(0, "7"), (5, "7")]
                + [(0, "7")] * 2
                + [(5, "7")] * 2
                + [(0, "7")] * 2
                + [(7, "7"), (5, "7"), (0, "7"), (7, "7")]
            ),
        ),
        chords=(
            Voice(
                "comp8",
                "organ",
                octave=4,
                level_db=-4,
                attack=0.01,
                decay=0.3,
                sustain=0.5,
                steps="x.x.x.x.x.x.x.x.",
            ),
        ),
        bass=Voice("walking", "fingered_bass", octave=2, level_db=-2, decay=0.5, sustain=0.4),
        lead=Voice(
            "melody",
            "guitar",
            octave=5,
            level_db=-5,
            decay=0.35,
            sustain=0.2,
            drive=1.5,
            density=0.55,
            slot=2,
            scale="blues",
        ),
        drums=(
            {"kick": "x.......x.......", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x.....x.x.......", "snare": "....x.......x...", "ride": "x.x.x.x.x.x.x.x."},
        ),
        kit=Kit(kick_decay=(0.15, 0.25), level_db=-3),
        swing8=(0.28, 0.34),
    ),
    "classical": Recipe(
        tempo=(60, 115),
        mode_tonic=(45, 57),
        progressions=(
            ((0, "maj"), (5, "maj"), (7, "maj"), (0, "maj")),
            ((0, "maj"), (9, "min"), (5, "maj"), (7, "maj")),
            ((0, "maj"), (2, "min"), (7, "7"), (0, "maj")),
            ((0, "min"), (5, "min"), (7, "maj"), (0, "min")),
            ((0, "min"), (8, "maj"), (5, "min"), (7, "7")),
        ),
        chords=(
            Voice("arp", "piano", octave=4, level_db=-2, attack=0.003, decay=0.5, sustain=0.1, release=0.2),
            Voice(
                "pad",
                "strings",
                octave=4,
                level_db=-9,
                attack=0.25,
                decay=1.0,
                sustain=0.8,
                release=0.4,
                vibrato=0.004,
                lowpass=3500,
            ),
        ),
        bass=Voice(
            "half",
            "strings",
            octave=2,
            level_db=-6,
            attack=0.08,
            decay=1.0,
            sustain=0.8,
            release=0.3,
            lowpass=1500,
        ),
        lead=Voice(
            "melody",
            "strings",
            octave=5,
            level_db=-4,
            attack=0.06,
            decay=1.0,
            sustain=0.85,
            release=0.15,
            vibrato=0.006,
            density=0.8,
            slot=4,
            scale="major",
        ),
        drums=(),
        chords_per_bar=1,
        timing_jitter=0.008,
    ),
    "country": Recipe(
        tempo=(95, 150),
        mode_tonic=(43, 50),
        progressions=(
            ((0, "maj"), (5, "maj"), (0, "maj"), (7, "maj")),
            ((0, "maj"), (0, "maj"), (5, "maj"), (7, "maj")),
            ((0, "maj"), (7, "maj"), (5, "maj"), (0, "maj")),
        ),
        chords=(
            Voice(
                "strum",
                "twang",
                octave=4,
                level_db=-3,
                decay=0.18,
                sustain=0.05,
                steps="..x...x...x...x.",
                highpass=250,
            ),
        ),
        bass=Voice("boom", "bass", octave=2, level_db=-3, decay=0.3, sustain=0.2),
        lead=Voice(
            "melody",
            "saw",
            octave=5,
            level_db=-8,
            attack=0.03,
            decay=0.6,
            sustain=0.7,
            vibrato=0.006,
            density=0.6,
            slot=2,
            scale="major_penta",
            lowpass=5000,
        ),
        drums=(
            {"kick": "x.......x.......", "snare": "o.o.x.o.o.o.x.o.", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x...x...x...x...", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
        ),
        kit=Kit(snare_decay=(0.05, 0.1), level_db=-5),
        swing8=(0.0, 0.08),
    ),
    "disco": Recipe(
        tempo=(110, 132),
        mode_tonic=(40, 47),
        progressions=(
            ((0, "m7"), (5, "m7")),
            ((0, "m7"), (10, "7"), (8, "maj7"), (7, "7")),
            ((2, "m7"), (7, "9")),
        ),
        chords=(
            Voice(
                "strum", "epiano", octave=4, level_db=-6, decay=0.12, sustain=0.05, steps="..x...x...x...x."
            ),
            Voice(
                "pad",
                "saw",
                octave=5,
                level_db=-12,
                attack=0.12,
                decay=1.0,
                sustain=0.7,
                lowpass=4000,
                vibrato=0.004,
            ),
        ),
        bass=Voice("octave", "fingered_bass", octave=2, level_db=0, decay=0.15, sustain=0.3),
        drums=(
            {
                "kick": "x...x...x...x...",
                "snare": "....x.......x...",
                "hat": "xxxxxxxxxxxxxxxx",
                "open": "..x...x...x...x.",
            },
            {
                "kick": "x...x...x...x...",
                "snare": "....x.......x...",
                "hat": "x.x.x.x.x.x.x.x.",
                "open": "..x...x...x...x.",
            },
        ),
        kit=Kit(kick_decay=(0.15, 0.22), hat_cutoff=(7000, 9000), level_db=0),
        crash_every=8,
    ),
    "hiphop": Recipe(
        tempo=(70, 100),
        mode_tonic=(36, 44),
        progressions=(
            ((0, "m7"), (8, "maj7")),
            ((0, "m9"), (3, "maj7"), (5, "m7"), (7, "m7")),
            ((0, "m7"), (0, "m7"), (5, "m9"), (5, "m9")),
        ),
        chords=(
            Voice("pad", "epiano", octave=4, level_db=-9, attack=0.01, decay=0.8, sustain=0.3, lowpass=1800),
        ),
        bass=Voice("sub", "sub", octave=1, level_db=4, attack=0.004, decay=0.9, sustain=0.4),
        lead=Voice(
            "melody",
            "bell",
            octave=6,
            level_db=-16,
            decay=0.4,
            sustain=0.0,
            density=0.25,
            slot=4,
            scale="minor_penta",
        ),
        drums=(
            {"kick": "x......x.x....x.", "snare": "....x.......x...", "hat": "xxxxxxxxxxxxxxxx"},
            {"kick": "x..x......x..x..", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x.....x...x.....", "snare": "....x.......x..o", "hat": "x.xxx.x.x.xxx.x."},
        ),
        kit=Kit(kick_pitch=(42, 52), kick_decay=(0.25, 0.45), snare_decay=(0.12, 0.2), level_db=2),
        swing16=(0.15, 0.33),
    ),
    "jazz": Recipe(
        tempo=(100, 200),
        mode_tonic=(41, 50),
        progressions=(
            ((2, "m9"), (7, "13"), (0, "maj9"), (0, "maj9")),
            ((0, "maj7"), (9, "9"), (2, "m7"), (7, "13")),
            ((2, "m7"), (7, "9"), (0, "maj7"), (9, "7")),
        ),
        chords=(Voice("comp", "epiano", octave=4, level_db=-6, decay=0.35, sustain=0.2, lowpass=4000),),
        bass=Voice("walking", "fingered_bass", octave=2, level_db=-2, decay=0.35, sustain=0.35, lowpass=1200),
        lead=Voice(
            "melody",
            "sax",
            octave=5,
            level_db=-5,
            attack=0.03,
            decay=0.5,
            sustain=0.6,
            vibrato=0.008,
            density=0.75,
            slot=2,
            scale="dorian",
            lowpass=4500,
        ),
        drums=(
            {
                "ride": "x...x.x.x...x.x.",
                "hat": "....x.......x...",
                "kick": "o.......o.......",
                "snare": "......o.......o.",
            },
            {"ride": "x...x.x.x...x.x.", "hat": "....x.......x..."},
        ),
        kit=Kit(snare_decay=(0.1, 0.2), snare_noise=(0.85, 0.97), level_db=-6),
        swing8=(0.25, 0.34),
        timing_jitter=0.008,
    ),
    "metal": Recipe(
        tempo=(130, 210),
        mode_tonic=(28, 35),
        progressions=(
            ((0, "5"), (8, "5"), (10, "5"), (0, "5")),
            ((0, "5"), (1, "5"), (0, "5"), (3, "5")),
            ((0, "5"), (5, "5"), (3, "5"), (10, "5")),
        ),
        chords=(
            Voice(
                "power",
                "dist_guitar",
                octave=3,
                level_db=-1,
                decay=0.1,
                sustain=0.5,
                drive=12.0,
                lowpass=6000,
                steps="xxxxxxxxxxxxxxxx",
            ),
        ),
        bass=Voice(
            "root",
            "fingered_bass",
            octave=2,
            level_db=-4,
            decay=0.1,
            sustain=0.5,
            drive=3.0,
            steps="x.x.x.x.x.x.x.x.",
        ),
        drums=(
            {"kick": "xxxxxxxxxxxxxxxx", "snare": "....x.......x...", "ride": "x.x.x.x.x.x.x.x."},
            {"kick": "x.x.x.x.x.x.x.x.", "snare": "..x...x...x...x.", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "xx.xxx.xxx.xxx.x", "snare": "....x.......x...", "hat": "x...x...x...x..."},
        ),
        kit=Kit(
            kick_pitch=(55, 70),
            kick_decay=(0.06, 0.1),
            snare_decay=(0.1, 0.18),
            hat_cutoff=(5000, 7000),
            level_db=-1,
        ),
        crash_every=4,
        clip_drive=1.5,
        timing_jitter=0.002,
    ),
    "pop": Recipe(
        tempo=(92, 128),
        mode_tonic=(43, 50),
        progressions=(
            ((0, "maj"), (7, "maj"), (9, "min"), (5, "maj")),
            ((9, "min"), (5, "maj"), (0, "maj"), (7, "maj")),
            ((0, "add9"), (9, "min"), (5, "add9"), (7, "maj")),
        ),
        chords=(
            Voice("pad", "saw", octave=4, level_db=-9, attack=0.08, decay=1.0, sustain=0.7, lowpass=3000),
            Voice("strum", "piano", octave=4, level_db=-7, decay=0.25, sustain=0.1, steps="x..x..x...x..x.."),
        ),
        bass=Voice("root", "bass", octave=2, level_db=-2, decay=0.25, sustain=0.4, steps="x..x..x.x..x..x."),
        lead=Voice(
            "melody",
            "square",
            octave=5,
            level_db=-6,
            attack=0.01,
            decay=0.4,
            sustain=0.5,
            density=0.65,
            slot=2,
            scale="major_penta",
            lowpass=5000,
        ),
        drums=(
            {"kick": "x.....x.x.......", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x.......x.x.....", "snare": "....x.......x...", "hat": "xxxxxxxxxxxxxxxx"},
        ),
        kit=Kit(level_db=-2),
        crash_every=8,
    ),
    "reggae": Recipe(
        tempo=(62, 92),
        mode_tonic=(40, 47),
        progressions=(
            ((0, "min"), (5, "min")),
            ((0, "maj"), (5, "maj"), (7, "maj"), (5, "maj")),
            ((0, "min"), (10, "maj")),
        ),
        chords=(
            Voice(
                "strum",
                "organ",
                octave=4,
                level_db=-5,
                decay=0.06,
                sustain=0.0,
                release=0.02,
                steps="..x...x...x...x.",
                highpass=400,
            ),
        ),
        bass=Voice("riff", "sub", octave=2, level_db=2, attack=0.01, decay=0.4, sustain=0.6, lowpass=700),
        lead=Voice(
            "melody",
            "melodica",
            octave=5,
            level_db=-11,
            attack=0.03,
            decay=0.5,
            sustain=0.6,
            density=0.35,
            slot=4,
            scale="minor_penta",
        ),
        drums=(
            {"kick": "........x.......", "snare": "........x.......", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x...x...x...x...", "snare": "........x.......", "hat": "x.x.x.x.x.x.x.x."},
        ),
        kit=Kit(snare_tone=(300, 420), snare_decay=(0.04, 0.08), snare_noise=(0.3, 0.5), level_db=-3),
        swing8=(0.1, 0.25),
        swing16=(0.0, 0.2),
    ),
    "rock": Recipe(
        tempo=(105, 160),
        mode_tonic=(40, 47),
        progressions=(
            ((0, "maj"), (10, "maj"), (5, "maj"), (0, "maj")),
            ((0, "5"), (5, "5"), (7, "5"), (5, "5")),
            ((0, "maj"), (7, "maj"), (5, "maj"), (5, "maj")),
        ),
        chords=(
            Voice(
                "strum",
                "dist_guitar",
                octave=3,
                level_db=-3,
                decay=0.3,
                sustain=0.4,
                drive=4.0,
                lowpass=5000,
                steps="x.x.x.x.x.x.x.x.",
            ),
        ),
        bass=Voice(
            "root", "fingered_bass", octave=2, level_db=-3, decay=0.2, sustain=0.5, steps="x.x.x.x.x.x.x.x."
        ),
        drums=(
            {"kick": "x.......x.x.....", "snare": "....x.......x...", "hat": "x.x.x.x.x.x.x.x."},
            {"kick": "x.....x.x.......", "snare": "....x.......x...", "ride": "x.x.x.x.x.x.x.x."},
        ),
        kit=Kit(level_db=-1),
        crash_every=4,
        clip_drive=0.8,
    ),
}

# ----------------------------------------------------------------------------------------------------------
# signal helpers (all vectorised over samples)


def _fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (a fast FFT length)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _fft_filter(x: np.ndarray, sr: int, response: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filter of ``x (T,)`` by a magnitude ``response(freqs Hz) -> gain`` (FFT domain)."""
    n = x.shape[-1]
    nfft = _fast_size(n + 256)  # a little padding keeps the circular wrap of decays negligible
    spec = np.fft.rfft(x, nfft)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)
    return np.fft.irfft(spec * response(freqs), nfft)[:n].astype(np.float32)


def _lowpass(fc: float, order: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: 1.0 / np.sqrt(1.0 + (f / fc) ** (2 * order))


def _highpass(fc: float, order: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: 1.0 / np.sqrt(1.0 + (fc / np.maximum(f, 1e-3)) ** (2 * order))


def _shape(x: np.ndarray, sr: int, lowpass: float = 0.0, highpass: float = 0.0) -> np.ndarray:
    if lowpass <= 0 and highpass <= 0:
        return x
    lp = _lowpass(lowpass) if lowpass > 0 else None
    hp = _highpass(highpass) if highpass > 0 else None

    def response(f: np.ndarray) -> np.ndarray:
        g = np.ones_like(f)
        if lp is not None:
            g = g * lp(f)
        if hp is not None:
            g = g * hp(f)
        return g

    return _fft_filter(x, sr, response)


def _drive(x: np.ndarray, drive: float) -> np.ndarray:
    """tanh saturation normalised so that full scale stays full scale; ``drive <= 0`` is the identity."""
    if drive <= 0:
        return x
    peak = float(np.max(np.abs(x))) or 1.0
    return (np.tanh(x * (drive / peak)) * (peak / math.tanh(drive))).astype(np.float32)


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


class _Tables:
    """Band-limited single-cycle wavetables, cached by (profile, number of harmonics)."""

    def __init__(self, sr: int) -> None:
        self.sr = sr
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self._phase = np.arange(_TABLE_SIZE, dtype=np.float64) / _TABLE_SIZE

    def get(self, profile: str, freq: float) -> np.ndarray:
        amps = PROFILES[profile]
        k = max(1, min(len(amps), int(0.45 * self.sr / max(freq, 1.0))))  # harmonics below ~Nyquist
        key = (profile, k)
        table = self._cache.get(key)
        if table is None:
            h = np.arange(1, k + 1, dtype=np.float64)
            table = (
                np.asarray(amps[:k])[:, None] * np.sin(2 * np.pi * h[:, None] * self._phase[None, :])
            ).sum(0)
            table = (table / max(np.max(np.abs(table)), 1e-9)).astype(np.float32)
            self._cache[key] = table
        return table


def _envelope(n: int, sr: int, v: Voice, gate: int) -> np.ndarray:
    """Attack / exponential decay to sustain / linear release after ``gate`` samples; ``(n,)`` float32."""
    t = np.arange(n, dtype=np.float32) / sr
    att = max(v.attack, 1e-3)
    env = np.minimum(t / att, 1.0)
    env *= v.sustain + (1.0 - v.sustain) * np.exp(-np.maximum(t - att, 0.0) / max(v.decay, 1e-3))
    if gate < n:
        rel = np.clip(1.0 - (t[gate:] - t[gate]) / max(v.release, 1e-3), 0.0, 1.0)
        env[gate:] *= rel
    return env


@dataclass
class _Note:
    start: float  # s
    dur: float  # s (gate length)
    midi: float
    vel: float


def _render_voice(
    notes: Sequence[_Note], v: Voice, n_total: int, sr: int, tables: _Tables, rng: np.random.Generator
) -> np.ndarray:
    """Sum of wavetable notes ``(n_total,)``; one vectorised render per note."""
    out = np.zeros(n_total, dtype=np.float32)
    for note in notes:
        s0 = int(round(note.start * sr))
        if s0 >= n_total or note.vel <= 0:
            continue
        gate = max(1, int(note.dur * sr))
        n = min(gate + int(v.release * sr) + 1, n_total - max(s0, 0))
        if s0 < 0:  # a note that started in the pre-roll: render only its visible part
            n = min(n - (-s0), n_total)
            offset = -s0
            s0 = 0
        else:
            offset = 0
        if n <= 0:
            continue
        f = _midi_hz(note.midi)
        t = (np.arange(n, dtype=np.float64) + offset) / sr
        cycles = f * t + rng.random()
        if v.vibrato > 0:
            rate = 5.5
            cycles += f * v.vibrato * (1.0 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate)
        table = tables.get(v.profile, f)
        idx = ((cycles % 1.0) * _TABLE_SIZE).astype(np.int32)
        env = _envelope(n + offset, sr, v, gate)[offset:]
        out[s0 : s0 + n] += note.vel * table[idx] * env
    return out


# ----------------------------------------------------------------------------------------------------------
# the grid


@dataclass
class _Grid:
    """Tempo grid of one clip: 16th-note steps with swing and human jitter."""

    step: float  # s per 16th
    swing8: float
    swing16: float
    jitter: float
    bars: int
    rng: np.random.Generator

    @property
    def bar(self) -> float:
        return 16 * self.step

    def time(self, step_index: int | float) -> float:
        """Onset time (s) of a global 16th-step index, swung and humanised."""
        i = int(step_index)
        t = step_index * self.step
        if i % 4 == 2:
            t += self.swing8 * 2 * self.step
        elif i % 2 == 1:
            t += self.swing16 * self.step + (self.swing8 * 2 * self.step if i % 4 == 3 else 0.0)
        return t + self.jitter * float(self.rng.standard_normal())


def _hits(mask: str) -> list[tuple[int, float]]:
    """16-step mask -> [(step, velocity)]: 'x' full, 'o' ghost."""
    return [(i, 1.0 if c == "x" else 0.45) for i, c in enumerate(mask) if c in "xo"]


# ----------------------------------------------------------------------------------------------------------
# drums


def _drum_templates(kit: Kit, sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One-shot samples for this clip's kit: ``{name: (L,) float32}``."""

    def u(r: tuple[float, float]) -> float:
        return float(rng.uniform(*r))

    out: dict[str, np.ndarray] = {}
    # kick: sine with an exponential pitch sweep from ~3x down to the body pitch, plus a click
    decay = u(kit.kick_decay)
    n = int(min(6 * decay, 1.2) * sr)
    t = np.arange(n, dtype=np.float64) / sr
    f_end = u(kit.kick_pitch)
    freq = f_end + 2.5 * f_end * np.exp(-t / 0.025)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    click = rng.standard_normal(n) * np.exp(-t / 0.003) * 0.3
    out["kick"] = (np.sin(phase) * np.exp(-t / decay) + click).astype(np.float32)
    # snare: band-passed noise burst + pitched body
    decay = u(kit.snare_decay)
    n = int(6 * decay * sr)
    t = np.arange(n, dtype=np.float64) / sr
    noise = _shape(rng.standard_normal(n).astype(np.float32), sr, lowpass=9000, highpass=1200)
    noise /= max(np.max(np.abs(noise)), 1e-9)
    mix = u(kit.snare_noise)
    body = np.sin(2 * np.pi * u(kit.snare_tone) * t) * np.exp(-t / 0.04)
    out["snare"] = (mix * noise * np.exp(-t / decay) + (1 - mix) * body).astype(np.float32)
    # cymbals: high-passed noise with metallic partials
    cutoff = u(kit.hat_cutoff)
    for name, dec, gain in (
        ("hat", u(kit.hat_decay), 0.5),
        ("open", 0.25, 0.45),
        ("ride", 0.7, 0.3),
        ("crash", 1.2, 0.5),
    ):
        n = int(5 * dec * sr)
        t = np.arange(n, dtype=np.float64) / sr
        x = _shape(
            rng.standard_normal(n).astype(np.float32), sr, highpass=cutoff if name != "ride" else cutoff * 0.6
        )
        x /= max(np.max(np.abs(x)), 1e-9)
        if name == "ride":
            ping = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(3000, 5000, size=3))
            x = 0.6 * x + 0.4 * ping / 3
        out[name] = (gain * x * np.exp(-t / dec)).astype(np.float32)
    return out


def _place(out: np.ndarray, sample: np.ndarray, t: float, vel: float, sr: int) -> None:
    s0 = int(round(t * sr))
    if s0 < 0:
        sample = sample[-s0:]
        s0 = 0
    n = min(sample.shape[0], out.shape[0] - s0)
    if n > 0:
        out[s0 : s0 + n] += vel * sample[:n]


def _render_drums(recipe: Recipe, grid: _Grid, n_total: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n_total, dtype=np.float32)
    if not recipe.drums:
        return out
    kit = _drum_templates(recipe.kit, sr, rng)
    pattern = recipe.drums[int(rng.integers(len(recipe.drums)))]
    levels = {"kick": 1.0, "snare": 0.8, "hat": 0.35, "open": 0.35, "ride": 0.35, "crash": 0.4}
    for bar in range(grid.bars):
        fill = bar % 4 == 3 and rng.random() < 0.5  # occasional snare fill at the end of a phrase
        for name, mask in pattern.items():
            for step, vel in _hits(mask):
                if vel < 1.0 and rng.random() < 0.3:  # ghost notes come and go
                    continue
                t = grid.time(bar * 16 + step)
                _place(out, kit[name], t, levels[name] * vel * float(rng.uniform(0.8, 1.0)), sr)
        if fill:
            for step in (12, 13, 14, 15):
                if rng.random() < 0.7:
                    _place(
                        out, kit["snare"], grid.time(bar * 16 + step), 0.6 * float(rng.uniform(0.6, 1.0)), sr
                    )
        if recipe.crash_every and bar % recipe.crash_every == 0:
            _place(out, kit["crash"], grid.time(bar * 16), 0.5, sr)
    return out


# ----------------------------------------------------------------------------------------------------------
# pitched parts


def _chord_notes(tonic: int, root: int, quality: str, octave: int) -> list[int]:
    """MIDI notes of a chord voiced from ``octave`` (root pitch class from tonic + root offset)."""
    base = 12 * (octave + 1) + (tonic + root) % 12
    return [base + i for i in CHORDS[quality]]


def _chord_events(
    v: Voice, chords: list[tuple[int, str]], tonic: int, grid: _Grid, cpb: int, rng: np.random.Generator
) -> list[_Note]:
    notes: list[_Note] = []
    span = 16 // cpb  # steps per chord
    for ci, (root, quality) in enumerate(chords):
        first = ci * span
        pitches = _chord_notes(tonic, root, quality, v.octave)
        if v.style == "pad":
            for p in pitches:
                notes.append(_Note(grid.time(first), span * grid.step, p, 0.5))
        elif v.style == "arp":
            # broken chord: Alberti (1-5-3-5) or rising, in 16ths or 8ths
            order = [0, 2, 1, 2] if rng.random() < 0.5 else [0, 1, 2, 1 + len(pitches) - 2]
            every = 1 if grid.step > 0.16 else 2  # 16ths below ~94 BPM, 8ths above
            for k, s in enumerate(range(0, span, every)):
                p = pitches[order[k % len(order)] % len(pitches)] + (12 if (k // len(order)) % 2 else 0)
                notes.append(
                    _Note(grid.time(first + s), every * grid.step * 1.5, p, 0.8 if s % 4 == 0 else 0.6)
                )
        elif v.style in ("strum", "power", "comp8"):
            mask = v.steps or "x...x...x...x..."
            for s, vel in _hits(mask):
                if s >= span:
                    break
                if v.style == "power" and rng.random() < 0.08:
                    continue
                t0 = grid.time(first + s)
                gate = (1.6 if v.style == "comp8" else 0.9) * grid.step * (2 if v.style != "power" else 1)
                for j, p in enumerate(pitches):  # strum: a few ms between strings
                    notes.append(
                        _Note(
                            t0 + 0.006 * j, gate, p, vel * float(rng.uniform(0.75, 1.0)) / len(pitches) ** 0.5
                        )
                    )
        elif v.style == "comp":
            # jazz comping: irregular stabs on (swung) 8ths, accents anticipating the beat
            for s in range(0, span, 2):
                if rng.random() < (0.45 if s % 4 else 0.25):
                    gate = grid.step * float(rng.choice([1.0, 2.0, 3.0]))
                    t0 = grid.time(first + s)
                    for p in pitches:
                        notes.append(_Note(t0, gate, p, float(rng.uniform(0.45, 0.8)) / len(pitches) ** 0.5))
        else:
            raise ValueError(f"unknown chord style {v.style!r}")
    return notes


def _bass_events(
    v: Voice,
    chords: list[tuple[int, str]],
    tonic: int,
    grid: _Grid,
    cpb: int,
    kick_mask: str,
    rng: np.random.Generator,
) -> list[_Note]:
    notes: list[_Note] = []
    span = 16 // cpb
    base = 12 * (v.octave + 1)
    for ci, (root, quality) in enumerate(chords):
        first = ci * span
        r = base + (tonic + root) % 12
        nxt = base + (tonic + chords[(ci + 1) % len(chords)][0]) % 12
        tones = CHORDS[quality]
        if v.style == "walking":  # quarter notes: root, chord tone, chord tone, chromatic approach
            line = [r, r + tones[1], r + tones[2 % len(tones)], nxt + int(rng.choice([-1, 1]))]
            for k in range(span // 4):
                notes.append(
                    _Note(
                        grid.time(first + 4 * k), grid.step * 3.5, line[k % 4], float(rng.uniform(0.8, 1.0))
                    )
                )
        elif v.style == "boom":  # root-fifth on 1 and 3 (country "boom-chick")
            for k, s in enumerate(range(0, span, 8)):
                notes.append(
                    _Note(
                        grid.time(first + s),
                        grid.step * 3.0,
                        r if k % 2 == 0 else r + 7 - 12 * (rng.random() < 0.5),
                        1.0,
                    )
                )
        elif v.style == "octave":  # disco: 8ths alternating root and octave
            for k, s in enumerate(range(0, span, 2)):
                notes.append(_Note(grid.time(first + s), grid.step * 1.2, r + 12 * (k % 2), 0.9))
        elif v.style == "root":
            mask = v.steps or "x.x.x.x.x.x.x.x."
            for s, vel in _hits(mask):
                if s < span:
                    notes.append(_Note(grid.time(first + s), grid.step * 1.8, r, vel))
        elif v.style == "half":  # long root / fifth notes
            for k, s in enumerate(range(0, span, 8)):
                notes.append(_Note(grid.time(first + s), grid.step * 8, r + (7 if k % 2 else 0), 0.7))
        elif v.style == "sub":  # 808: long sub notes on the kick hits, sometimes an octave drop
            for s, _ in _hits(kick_mask or "x.......x.......")[:3]:
                if s < span:
                    notes.append(
                        _Note(
                            grid.time(first + s),
                            grid.step * float(rng.uniform(3, 7)),
                            r - 12 * (rng.random() < 0.3),
                            1.0,
                        )
                    )
        elif v.style == "riff":  # reggae: syncopated, drops beat one sometimes
            steps = [(0, r), (3, r), (6, r + 7), (8, r + 12), (10, r + 10), (11, r + 7)]
            for s, p in steps:
                if s < span and not (s == 0 and rng.random() < 0.4):
                    notes.append(
                        _Note(grid.time(first + s), grid.step * 1.7, p, float(rng.uniform(0.8, 1.0)))
                    )
        else:
            raise ValueError(f"unknown bass style {v.style!r}")
    return notes


def _lead_events(v: Voice, tonic: int, grid: _Grid, rng: np.random.Generator) -> list[_Note]:
    """Random-walk melody on the recipe's scale, one slot every ``v.slot`` steps, legato within a phrase."""
    scale = SCALES[v.scale]
    pitches = [12 * (v.octave + 1) + (tonic % 12) + o + 12 * k for k in (-1, 0, 1) for o in scale]
    idx = len(pitches) // 2
    notes: list[_Note] = []
    total = grid.bars * 16
    s = 0
    while s < total:
        if rng.random() < v.density:
            length = v.slot * int(rng.choice([1, 1, 2, 3]))
            idx = int(np.clip(idx + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(pitches) - 1))
            notes.append(
                _Note(grid.time(s), grid.step * length * 0.95, pitches[idx], float(rng.uniform(0.6, 1.0)))
            )
            s += length
        else:
            s += v.slot
    return notes


# ----------------------------------------------------------------------------------------------------------
# public API


def _borrow(recipe: Recipe, genre: str, rng: np.random.Generator, overlap: float) -> Recipe:
    """The genre's recipe with each part replaced, with probability ``overlap``, by another genre's part.

    Tempo, swing, key and progression stay the genre's own, so a borrowed part is played in its style
    (e.g. a jazz walking bass under a rock progression); this is what makes genres overlap like real ones.
    """
    others = [g for g in GENRES if g != genre]
    draws = rng.random(4)
    picks = rng.integers(len(others), size=4)
    donors = [RECIPES[others[int(i)]] for i in picks]
    changes: dict[str, object] = {}
    if draws[0] < overlap:
        changes.update(drums=donors[0].drums, kit=donors[0].kit, crash_every=donors[0].crash_every)
    if draws[1] < overlap:
        changes["bass"] = donors[1].bass
    if draws[2] < overlap:
        changes["chords"] = donors[2].chords
    if draws[3] < overlap:
        changes["lead"] = donors[3].lead
    return replace(recipe, **changes) if changes else recipe


def _validate(genre: str, duration: float, sample_rate: int, channels: int) -> None:
    if genre not in RECIPES:
        raise ValueError(f"unknown genre {genre!r}; known genres: {', '.join(GENRES)}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    if int(sample_rate) != sample_rate or not 4000 <= sample_rate <= 192000:
        raise ValueError(f"sample_rate must be an integer in [4000, 192000] Hz, got {sample_rate!r}")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels!r}")


def generate_clip(
    genre: str,
    rng: np.random.Generator,
    duration: float,
    sample_rate: int,
    channels: int = 1,
    *,
    overlap: float = OVERLAP,
) -> np.ndarray:
    """Synthesise one clip of ``genre``.

    Args:
        genre: one of :data:`GENRES`.
        rng: the clip's random generator (all randomness comes from it, so a seeded generator is reproducible).
        duration: clip length in seconds; the result has ``round(duration * sample_rate)`` samples.
        sample_rate: Hz.
        channels: 1 -> ``(T,)`` mono; 2 -> ``(T, 2)`` stereo (parts panned at random).
        overlap: probability, per part (drums, bass, chords, melody), that the clip borrows that part's
            recipe from another genre -- the genres' overlap (0: textbook clips).

    Returns:
        float32 ``(T,)`` or ``(T, channels)`` in [-1, 1], at a random loudness (RMS in [-30, -14] dBFS).
    """
    _validate(genre, duration, sample_rate, channels)
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a probability in [0, 1], got {overlap!r}")
    recipe = _borrow(RECIPES[genre], genre, rng, overlap)
    sr = int(sample_rate)
    n_out = int(round(duration * sr))
    bpm = float(rng.uniform(*recipe.tempo))
    step = 60.0 / bpm / _STEPS_PER_BEAT
    pre = float(rng.uniform(0, 16 * step))  # start somewhere inside a bar, not always on the downbeat
    n_pre = int(pre * sr)
    n_total = n_pre + n_out
    bars = int(math.ceil(n_total / sr / (16 * step))) + 1
    grid = _Grid(
        step,
        float(rng.uniform(*recipe.swing8)),
        float(rng.uniform(*recipe.swing16)),
        recipe.timing_jitter,
        bars,
        rng,
    )
    tonic = int(rng.integers(recipe.mode_tonic[0], recipe.mode_tonic[1] + 1))
    prog = list(recipe.progressions[int(rng.integers(len(recipe.progressions)))])
    cpb = recipe.chords_per_bar
    chords = [prog[i % len(prog)] for i in range(bars * cpb)]
    tables = _Tables(sr)

    def level(db: float) -> float:
        return 10.0 ** ((db + float(rng.uniform(-4.0, 4.0))) / 20.0)  # per-clip mix randomisation

    stems: list[tuple[np.ndarray, float]] = []  # (signal, pan in [-1, 1])
    if recipe.drums:  # every part is normalised to the same RMS before its (random) mix level
        drums = _render_drums(recipe, grid, n_total, sr, rng)
        stems.append((drums / max(_rms(drums), 1e-6) * 0.1 * level(recipe.kit.level_db), 0.0))
    side = 1.0 if rng.random() < 0.5 else -1.0  # chord parts alternate sides; the melody takes the next
    kick_mask = recipe.drums[0].get("kick", "") if recipe.drums else ""
    for v in recipe.chords:
        x = _render_voice(_chord_events(v, chords, tonic, grid, cpb, rng), v, n_total, sr, tables, rng)
        x = _shape(_drive(x, v.drive), sr, v.lowpass, v.highpass)
        stems.append((x * level(v.level_db) / max(_rms(x), 1e-6) * 0.1, side * float(rng.uniform(0.4, 0.9))))
        side = -side
    if recipe.bass is not None:
        v = recipe.bass
        x = _render_voice(
            _bass_events(v, chords, tonic, grid, cpb, kick_mask, rng), v, n_total, sr, tables, rng
        )
        x = _shape(_drive(x, v.drive), sr, v.lowpass, v.highpass)
        stems.append((x * level(v.level_db) / max(_rms(x), 1e-6) * 0.1, 0.0))
    if recipe.lead is not None:
        v = recipe.lead
        x = _render_voice(_lead_events(v, tonic, grid, rng), v, n_total, sr, tables, rng)
        x = _shape(_drive(x, v.drive), sr, v.lowpass, v.highpass)
        stems.append((x * level(v.level_db) / max(_rms(x), 1e-6) * 0.1, side * float(rng.uniform(0.3, 0.7))))

    # mix (mono or panned stereo), then master: saturation, random EQ, noise floor, loudness, limiter
    if channels == 1:
        mix = sum(s for s, _ in stems)[None, :]
    else:
        mix = np.zeros((2, n_total), dtype=np.float32)
        for s, p in stems:
            mix[0] += s * math.sqrt((1 - p) / 2)
            mix[1] += s * math.sqrt((1 + p) / 2)
    mix = mix[:, n_pre:]
    if recipe.clip_drive > 0:
        mix = np.stack([_drive(c, recipe.clip_drive * float(rng.uniform(0.6, 1.4))) for c in mix])
    tilt = float(rng.uniform(-5.0, 3.0))  # dB per octave around 1 kHz
    lp_top = max(min(11000.0, 0.45 * sr), 2500.0)  # Hz; low rates get the same (inaudible) draw range
    lp = float(np.exp(rng.uniform(np.log(2500.0), np.log(lp_top))))
    hp = float(np.exp(rng.uniform(np.log(25.0), np.log(150.0))))

    def master_eq(f: np.ndarray) -> np.ndarray:
        g = (np.maximum(f, 20.0) / 1000.0) ** (tilt / 6.02)
        return g * _lowpass(lp, 2)(f) * _highpass(hp, 2)(f)

    mix = np.stack([_fft_filter(c, sr, master_eq) for c in mix])
    rms = _rms(mix)
    noise_db = float(rng.uniform(-60.0, -35.0))
    mix += (rms * 10 ** (noise_db / 20)) * rng.standard_normal(mix.shape, dtype=np.float32)
    target = 10.0 ** (float(rng.uniform(-30.0, -14.0)) / 20.0)
    mix *= target / max(_rms(mix), 1e-9)
    mix = _soft_limit(mix)
    out = mix[0] if channels == 1 else mix.T
    return np.ascontiguousarray(out, dtype=np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _soft_limit(x: np.ndarray, knee: float = 0.9) -> np.ndarray:
    """Leave |x| <= knee alone and squash the rest smoothly below 1.0 (peak <= 1 guaranteed)."""
    a = np.abs(x)
    over = a > knee
    if not over.any():
        return x
    y = x.copy()
    y[over] = np.sign(x[over]) * (knee + (1.0 - knee) * np.tanh((a[over] - knee) / (1.0 - knee)))
    return y


def clip_seed(seed: int, genre: str, index: int) -> np.random.SeedSequence:
    """The seed of clip ``index`` of ``genre``: a function of (seed, genre name, index) only."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(genre.encode("utf-8")), int(index)])


def clip_path(out_dir: str | os.PathLike, genre: str, index: int, ext: str) -> Path:
    """``out_dir/<genre>/<genre>.000NN.<ext>`` (GTZAN's naming)."""
    return Path(out_dir) / genre / f"{genre}.{index:05d}.{ext}"


def _write_clip(task: tuple[str, str, int, str, float, int, int, int, float]) -> str:
    out_dir, genre, index, ext, duration, sample_rate, channels, seed, overlap = task
    import soundfile as sf

    rng = np.random.default_rng(clip_seed(seed, genre, index))
    audio = generate_clip(genre, rng, duration, sample_rate, channels, overlap=overlap)
    path = clip_path(out_dir, genre, index, ext)
    fmt, subtype = FORMATS[ext]
    tmp = path.with_name(f".{path.name}.part")  # hidden partial file: a crash never leaves a truncated clip
    try:
        sf.write(str(tmp), audio, sample_rate, format=fmt, subtype=subtype)
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not write {path}: {err}") from err
    return str(path)


def make_corpus(
    out_dir: str | os.PathLike,
    *,
    clips_per_genre: int = 12,
    duration: float = 10.0,
    sample_rate: int = 22050,
    formats: Sequence[str] = ("wav",),
    seed: int = 0,
    genres: Sequence[str] = GENRES,
    channels: int = 1,
    workers: int | None = None,
    progress: bool = True,
    overlap: float = OVERLAP,
) -> list[Path]:
    """Write a synthetic corpus ``out_dir/<genre>/<genre>.000NN.<ext>``; returns the paths in (genre, index) order.

    Clip ``i`` of a genre is written as ``formats[i % len(formats)]`` (``wav`` PCM_16, ``flac`` PCM_16,
    ``ogg`` Vorbis, ``mp3`` layer III), so a mixed-format corpus is deterministic. Each clip's generator is
    derived from ``(seed, genre, i)``, so the audio does not depend on ``workers`` (``None``: one process per
    CPU core, ``0``/``1``: in this process). ``overlap`` is :func:`generate_clip`'s part-borrowing probability.
    Existing files of the same names are overwritten.
    """
    genres = list(genres)
    formats = [f.lower().lstrip(".") for f in formats]
    if clips_per_genre < 1:
        raise ValueError(f"clips_per_genre must be >= 1, got {clips_per_genre}")
    if not genres:
        raise ValueError("no genres requested")
    if len(set(genres)) != len(genres):
        raise ValueError(f"genres repeated: {genres}")
    if not formats:
        raise ValueError("no formats requested")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    for genre in genres:
        _validate(genre, duration, sample_rate, channels)
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a probability in [0, 1], got {overlap!r}")
    if "mp3" in formats and sample_rate not in MP3_SAMPLE_RATES:
        raise ValueError(
            f"MP3 cannot store {sample_rate} Hz; use one of {MP3_SAMPLE_RATES} or another format"
        )
    out = Path(out_dir)
    for genre in genres:
        (out / genre).mkdir(parents=True, exist_ok=True)
    tasks = [
        (
            str(out),
            g,
            i,
            formats[i % len(formats)],
            float(duration),
            int(sample_rate),
            int(channels),
            int(seed),
            float(overlap),
        )
        for g in genres
        for i in range(clips_per_genre)
    ]
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    n_workers = max(1, min(n_workers, len(tasks)))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="synthesising clips", unit="clip", disable=not progress)
    try:
        if n_workers == 1:
            for task in tasks:
                _write_clip(task)
                bar.update()
        else:
            # spawn: safe even when the parent holds threads (torch, a test runner); results are order-free
            with mp.get_context("spawn").Pool(n_workers) as pool:
                for _ in pool.imap_unordered(_write_clip, tasks, chunksize=1):
                    bar.update()
    finally:
        bar.close()
    logger.info("wrote %d synthetic clips (%d genres) to %s", len(tasks), len(genres), out)
    return [clip_path(out, g, i, ext) for (_, g, i, ext, *_rest) in tasks]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python tools/make_synthetic.py OUT [options]`` (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="make_synthetic.py",
        description=(
            "Write a deterministic synthetic music corpus, OUT/<genre>/<genre>.000NN.<ext>, in GTZAN's layout "
            "and genre names. Each genre is a recipe of rhythm (tempo, swing, drum patterns), harmony "
            "(chord progressions, bass and melody styles) and timbre (instrument harmonics, distortion, "
            "filtering); loudness and a mastering EQ are random per clip. Output depends only on the seed, "
            "never on --workers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "out", type=Path, help="output folder (created; files of the same names are overwritten)"
    )
    parser.add_argument("--clips-per-genre", type=int, default=12, help="clips per genre")
    parser.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--sample-rate", type=int, default=22050, help="sample rate in Hz")
    parser.add_argument(
        "--formats",
        default="wav",
        help="comma-separated file formats from wav,flac,ogg,mp3; clip i gets formats[i %% len(formats)]",
    )
    parser.add_argument("--channels", type=int, default=1, choices=(1, 2), help="1: mono, 2: stereo")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument(
        "--overlap",
        type=float,
        default=OVERLAP,
        help="probability that a clip borrows a part (drums, bass, chords, melody) from another genre",
    )
    parser.add_argument(
        "--genres", nargs="+", default=list(GENRES), metavar="GENRE", help=f"genres, from: {' '.join(GENRES)}"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per CPU core; 1: no pool)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    genres = [g for item in args.genres for g in item.split(",") if g]
    formats = [f for f in args.formats.split(",") if f]
    try:
        paths = make_corpus(
            args.out,
            clips_per_genre=args.clips_per_genre,
            duration=args.duration,
            sample_rate=args.sample_rate,
            formats=formats,
            seed=args.seed,
            genres=genres,
            channels=args.channels,
            workers=args.workers,
            overlap=args.overlap,
            progress=not args.quiet,
        )
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {len(paths)} clips ({len(genres)} genres x {args.clips_per_genre}) to {args.out}")
    return 0
