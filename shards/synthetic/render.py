"""One synthetic clip from a genre recipe (:func:`generate_clip`), numpy only.

Note and drum events are laid out on a tempo grid; each event is rendered vectorised (band-limited
wavetables, exponential envelopes, FFT-domain filters); the parts are mixed and mastered (saturation,
random EQ, noise floor, loudness, limiter). All randomness comes from the clip's generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from shards.synthetic.recipes import CHORDS, GENRES, OVERLAP, PROFILES, RECIPES, SCALES, Kit, Recipe, Voice

_TABLE_SIZE = 4096  # samples per wavetable cycle
_STEPS_PER_BEAT = 4  # the event grid is 16th notes in 4/4

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

    return _mix_and_master(stems, n_total, n_pre, sr, channels, recipe.clip_drive, rng)


def _mix_and_master(
    stems: list[tuple[np.ndarray, float]],
    n_total: int,
    n_pre: int,
    sr: int,
    channels: int,
    clip_drive: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix the stems (mono, or panned stereo), each ``n_total`` samples long; drop the ``n_pre`` lead-in samples, then master: saturation,
    a random EQ, a noise floor, a random loudness and the limiter. -> float32 ``(T,)`` or ``(T, 2)``."""
    if channels == 1:
        mix = sum(s for s, _ in stems)[None, :]
    else:
        mix = np.zeros((2, n_total), dtype=np.float32)
        for s, p in stems:
            mix[0] += s * math.sqrt((1 - p) / 2)
            mix[1] += s * math.sqrt((1 + p) / 2)
    mix = mix[:, n_pre:]
    if clip_drive > 0:
        mix = np.stack([_drive(c, clip_drive * float(rng.uniform(0.6, 1.4))) for c in mix])
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
