"""The genres of the synthetic corpus as data: musical vocabulary (chords, scales), instrument timbres
(harmonic profiles), and one :class:`Recipe` per genre (rhythm, harmony, timbre; see :mod:`shards.synthetic`).

Pure data and frozen dataclasses: rendering lives in :mod:`shards.synthetic.render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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


OVERLAP = (
    0.15  # default probability that a clip borrows one part (drums, bass, chords, melody) from another genre
)

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
