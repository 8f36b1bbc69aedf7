#!/usr/bin/env python
"""A small labelled set of REAL music: real compositions from music21's bundled corpus, rendered to audio.

Six repertoires (classes), ``--clips`` thirty-second clips each (default 40), 22,050-Hz mono 16-bit WAV:

========== ================================================================ ============================
class      music21 corpus files                                              group (never split by a fold)
========== ================================================================ ============================
chorale    J. S. Bach four-part chorales (``bach/bwv*.mxl``), one per tune   the chorale (BWV number);
           (harmonisations of a tune already taken are skipped)             tunes are not repeated
mass       Palestrina mass movements (``palestrina/*.krn``)                  the mass (``!!!OPR`` header)
madrigal   Monteverdi madrigals, books 3-5 (``monteverdi/*.mxl``)            the madrigal
trecento   14th-century Italian polyphony (``trecento/*.xml``)               the piece
quartet    string quartets: Beethoven, Haydn, Mozart, R. Schumann           the quartet (all movements)
fiddle     Ryan's Mammoth Collection dance tunes (``ryansMammoth/*.abc``)    the tune
========== ================================================================ ============================

Each clip is a real excerpt: a start at a bar line, about 30 s of the score's notes (a piece shorter than
that is played again from the top, as dance tunes and chorale verses are), then rendered by FluidSynth
with a General MIDI soundfont. Per clip (seeded, so the set is reproducible) the script draws what a
performance would vary, so that instrument timbre alone does not give the class away:

- the ensemble, from pools that overlap between classes (a chorale may be sung, played on an organ, by
  strings or brass; a quartet movement may be played by strings, winds or a piano; ...);
- the tempo: the score's metronome mark where it has one (music21 also reads tempo words), else a range
  typical of the repertoire, times a factor in [0.85, 1.15];
- a transposition of -2..+2 semitones, the loudness (the score's dynamics where it has them, plus a
  per-clip level and per-note jitter), reverb and chorus sends, stereo panning (mixed down to mono), and
  the output level.

Output (``--out``, default ``/work/data/realmusic``)::

    audio/<class>/<group>__<clip>.wav
    clips.csv        path,label,artist,track_id,piece,composer,source,start_quarter,tempo_qpm,...
    clips_tags.csv   the same rows, multi-label: path,genre,...,labels (the class in ``genre``; ``labels``
                     the ``;``-separated instrument families (``TAGS``) of the parts that sound in the clip)
    build.json       the settings, versions, per-class and per-tag counts

``clips.csv`` is the engine's ``csv`` layout; its ``artist`` column carries the *group* (piece), which the
ingest keeps within one split and one fold::

    python tools/make_shards.py --layout csv /work/data/realmusic/clips.csv --out /work/data/realmusic_shards \\
        --folds 5 --group-by artist --split-ratios 0.85,0.15,0
    python tools/make_shards.py --layout csv /work/data/realmusic/clips_tags.csv \\
        --out /work/data/realmusic_tag_shards --folds 5 --group-by artist --split-ratios 0.85,0.15,0

Needs (benchmark-only, never runtime dependencies of the engine): ``pip install music21`` (corpus and
parser; built with 10.5.1), ``apt-get install fluidsynth fluid-soundfont-gm`` (FluidSynth 2.3, FluidR3_GM).
One process by default (``--workers``); about 4-6 minutes of CPU for 240 clips, most of it music21 parsing
the long quartet files.

    python benchmarks/realmusic/build.py [--out DIR] [--clips 40] [--seconds 30] [--seed 0] [--workers 1]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("realmusic")

SAMPLE_RATE = 22050
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
CLASSES = ("chorale", "mass", "madrigal", "trecento", "quartet", "fiddle")

# ------------------------------------------------------------------------------------------ ensembles
# General MIDI programs (0-based). A "by pitch" ensemble gives each part the instrument of the register its
# mean pitch falls in: [(lowest mean MIDI pitch, program), ...] from high to low.
GM = {
    "piano": 0, "harpsichord": 6, "organ": 19, "reed_organ": 20, "accordion": 21, "guitar": 24,
    "violin": 40, "viola": 41, "cello": 42, "contrabass": 43, "harp": 46, "strings": 48, "slow_strings": 49,
    "choir": 52, "oohs": 53, "trumpet": 56, "trombone": 57, "tuba": 58, "horn": 60,
    "oboe": 68, "bassoon": 70, "clarinet": 71, "flute": 73, "recorder": 74,
}
ENSEMBLES: dict[str, list[tuple[int, list[str]]]] = {
    # name: [(lowest mean pitch of the register, [programs to draw from for that register]), ...]
    "string_quartet": [(67, ["violin"]), (55, ["viola"]), (0, ["cello"])],
    "string_section": [(0, ["strings", "slow_strings"])],
    "choir": [(0, ["choir", "oohs"])],
    "organ": [(0, ["organ", "reed_organ"])],
    "piano": [(0, ["piano"])],
    "harpsichord": [(0, ["harpsichord"])],
    "guitar": [(0, ["guitar", "harp"])],
    "winds": [(72, ["flute"]), (64, ["oboe", "clarinet"]), (55, ["clarinet", "horn"]), (0, ["bassoon"])],
    "brass": [(67, ["trumpet"]), (55, ["horn"]), (45, ["trombone"]), (0, ["tuba", "trombone"])],
    "recorders": [(0, ["recorder", "flute"])],
    "accordion": [(0, ["accordion"])],
    # every part its own instrument from a broad pool (a "broken consort")
    "mixed": [(0, ["violin", "viola", "cello", "flute", "oboe", "clarinet", "recorder", "horn", "guitar",
                   "harpsichord", "organ", "choir"])],
}
# the multi-label version's vocabulary: instrument families, each GM program above in exactly one
TAG_PROGRAMS: dict[str, tuple[str, ...]] = {
    "voice": ("choir", "oohs"),
    "organ": ("organ", "reed_organ"),
    "accordion": ("accordion",),
    "piano": ("piano",),
    "harpsichord": ("harpsichord",),
    "plucked": ("guitar", "harp"),
    "bowed_strings": ("violin", "viola", "cello", "contrabass", "strings", "slow_strings"),
    "brass": ("trumpet", "horn", "trombone", "tuba"),
    "reeds": ("oboe", "clarinet", "bassoon"),
    "flutes": ("flute", "recorder"),
}
TAGS = tuple(TAG_PROGRAMS)
PROGRAM_TAG = {GM[name]: tag for tag, names in TAG_PROGRAMS.items() for name in names}
# per class: (ensemble, weight); every ensemble but one appears in at least two classes
CLASS_ENSEMBLES: dict[str, list[tuple[str, float]]] = {
    "chorale": [("choir", 3), ("organ", 3), ("string_section", 1), ("string_quartet", 1), ("brass", 1),
                ("piano", 1)],
    "mass": [("choir", 4), ("organ", 2), ("recorders", 1), ("brass", 1), ("string_section", 1), ("winds", 1)],
    "madrigal": [("choir", 4), ("string_quartet", 1), ("harpsichord", 1), ("recorders", 1),
                 ("string_section", 1), ("mixed", 2)],
    "trecento": [("recorders", 2), ("choir", 2), ("string_quartet", 1), ("guitar", 1), ("organ", 1),
                 ("winds", 1), ("harpsichord", 1), ("mixed", 1)],
    "quartet": [("string_quartet", 5), ("string_section", 1), ("piano", 1), ("winds", 2), ("mixed", 1)],
    "fiddle": [("string_quartet", 3), ("recorders", 2), ("accordion", 2), ("piano", 1), ("guitar", 1),
               ("winds", 1)],
}
# quarter notes per minute when the score has no metronome mark (uniform in the range)
CLASS_TEMPO: dict[str, tuple[float, float]] = {
    "chorale": (66, 84),
    "mass": (110, 140),  # 4/2 alla breve: the half note is the beat
    "madrigal": (80, 110),
    "trecento": (90, 130),
    "quartet": (90, 140),
    "fiddle": (100, 130),
}


@dataclass
class Source:
    """One corpus file a clip can come from."""

    label: str
    path: str  # music21 corpus path, e.g. "bach/bwv1.6.mxl"
    group: str  # piece id: clips of one group never land on both sides of a fold
    composer: str
    piece: str


@dataclass
class ClipPlan:
    label: str
    source: Source
    index: int  # clip number within the class
    seed: int
    take: int = 0  # n-th clip drawn from this file (a different bar offset each time)


@dataclass
class ClipResult:
    path: str  # relative to the output folder
    label: str
    artist: str  # = group, for the csv layout's grouping
    track_id: str
    piece: str
    composer: str
    source: str
    start_quarter: float
    tempo_qpm: float
    tempo_from_score: bool
    transpose: int
    ensemble: str
    programs: str
    looped: bool
    parts: int
    notes: int
    labels: str  # ";"-joined instrument families (TAGS) of the parts that sound in the clip


# ------------------------------------------------------------------------------------------ sources
def _corpus_dir() -> Path:
    import music21

    return Path(music21.__file__).resolve().parent / "corpus"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "x"


def find_sources() -> dict[str, list[Source]]:
    """Every candidate file per class, with its group; sorted, so the seeded draws are reproducible."""
    root = _corpus_dir()
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    out: dict[str, list[Source]] = {c: [] for c in CLASSES}
    for p in rel:
        if re.fullmatch(r"bach/bwv[\d.]+\.mxl", p):
            bwv = p.split("/")[1].rsplit(".", 1)[0]
            out["chorale"].append(Source("chorale", p, f"chorale-{bwv}", "J. S. Bach", bwv))
        elif p.startswith("palestrina/") and p.endswith(".krn"):
            header = (root / p).read_text(encoding="latin-1", errors="replace")[:4000]
            m = re.search(r"^!!!OPR:\s*(.+)$", header, re.M)
            mass = m.group(1).strip() if m else p
            out["mass"].append(Source("mass", p, f"mass-{_slug(mass)}", "Palestrina", mass))
        elif re.fullmatch(r"monteverdi/madrigal\.\d+\.\d+\.mxl", p):
            name = p.split("/")[1].rsplit(".", 1)[0]
            out["madrigal"].append(Source("madrigal", p, f"madrigal-{name}", "Monteverdi", name))
        elif p.startswith("trecento/") and p.endswith(".xml"):
            name = p.split("/")[1].rsplit(".", 1)[0]
            out["trecento"].append(Source("trecento", p, f"trecento-{_slug(name)}", "trecento", name))
        elif re.fullmatch(r"(beethoven|haydn|mozart|schumann_robert)/(opus|k)\d.*\.mxl", p):
            # a folder is one quartet (movement*.mxl); a file directly in the composer folder is a whole
            # quartet; Mozart's k545 is a piano sonata and Schumann's opus48 a song cycle
            if "k545" in p or "opus48" in p or "dichterliebe" in p:
                continue
            composer, rest = p.split("/", 1)
            work = rest.split("/")[0].rsplit(".", 1)[0] if "/" in rest else rest.rsplit(".", 1)[0]
            out["quartet"].append(Source("quartet", p, f"quartet-{composer}-{work}", composer, work))
        elif p.startswith("ryansMammoth/") and p.endswith(".abc"):
            name = p.split("/")[1].rsplit(".", 1)[0]
            out["fiddle"].append(Source("fiddle", p, f"fiddle-{_slug(name)}", "trad.", name))
    return out


def plan_clips(sources: dict[str, list[Source]], clips: int, seed: int) -> list[ClipPlan]:
    """``clips`` clips per class: groups in a seeded order, one file per group per round, round-robin over
    groups until the class has enough (classes with fewer groups than clips take several clips per group,
    each from another file or another bar of the same file)."""
    plans: list[ClipPlan] = []
    for ci, label in enumerate(CLASSES):
        rng = np.random.default_rng([seed, ci])
        by_group: dict[str, list[Source]] = {}
        for s in sources[label]:
            by_group.setdefault(s.group, []).append(s)
        if not by_group:
            raise SystemExit(f"no music21 corpus files found for class {label!r}")
        groups = sorted(by_group)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(by_group[g])
        n_taken: dict[str, int] = {}
        picks: list[tuple[Source, int]] = []
        rnd = 0
        # more candidates than needed: chorale tunes already taken are skipped at render time
        want = clips * 2 if label == "chorale" else clips
        while len(picks) < want:
            for g in groups:
                files = by_group[g]
                src = files[rnd % len(files)]
                take = n_taken.get(src.path, 0)
                n_taken[src.path] = take + 1
                picks.append((src, take))
                if len(picks) >= want:
                    break
            rnd += 1
        for i, (src, take) in enumerate(picks):
            plans.append(ClipPlan(label, src, i, int(rng.integers(2**31)), take))
    return plans


# ------------------------------------------------------------------------------------------ score -> notes
@dataclass
class Note:
    start: float  # quarter lengths from the start of the piece
    dur: float
    pitch: int
    velocity: int
    part: int


def _parse(path: str):
    from music21 import corpus

    return corpus.parse(path)


def score_notes(score) -> tuple[list[Note], list[float], float, list[tuple[float, float]]]:
    """(notes of every part, bar-line offsets, length in quarters, [(offset, quarter bpm) metronome marks])."""
    from music21 import dynamics, tempo

    notes: list[Note] = []
    for pi, part in enumerate(score.parts):
        flat = part.flatten()  # (music21's stripTies is slow on long movements: ties are merged here)
        dyn = [(float(d.offset), d.volumeScalar) for d in flat.getElementsByClass(dynamics.Dynamic)]
        di, level = 0, None
        open_ties: dict[int, Note] = {}  # MIDI pitch -> the note a tie continues
        for el in flat.notes:
            if el.duration.isGrace or el.quarterLength <= 0:
                continue
            off = float(el.offset)
            while di < len(dyn) and dyn[di][0] <= off:
                level = dyn[di][1]
                di += 1
            vel = 80 if level is None else int(40 + 75 * float(level))
            for n in ([el] if el.isNote else list(el.notes)):
                midi, tie = int(n.pitch.midi), (n.tie or el.tie)
                kind = tie.type if tie is not None else None
                prev = open_ties.get(midi)
                if kind in ("continue", "stop") and prev is not None:
                    prev.dur = off + float(el.quarterLength) - prev.start
                    if kind == "stop":
                        del open_ties[midi]
                    continue
                note = Note(off, float(el.quarterLength), midi, vel, pi)
                notes.append(note)
                if kind in ("start", "continue"):
                    open_ties[midi] = note
                else:
                    open_ties.pop(midi, None)
    bars = sorted({float(m.offset) for m in score.parts[0].getElementsByClass("Measure")}) if score.parts else []
    length = float(score.highestTime)
    marks = []
    for mm in score.recurse().getElementsByClass(tempo.MetronomeMark):
        try:
            qpm = mm.getQuarterBPM()
        except Exception:  # a mark music21 cannot turn into a number
            qpm = None
        if qpm:
            marks.append((float(mm.getOffsetInHierarchy(score)), float(qpm)))
    return notes, bars or [0.0], length, sorted(marks)


def melody_signature(notes: list[Note], n: int = 14) -> tuple[int, ...]:
    """Interval sequence of the highest part's first ``n`` notes (transposition-invariant): one chorale
    tune (the highest part by mean pitch: some chorales list a doubling instrument first)."""
    parts = {x.part for x in notes}
    hi = max(parts, key=lambda p: np.mean([x.pitch for x in notes if x.part == p]))
    top = sorted((x for x in notes if x.part == hi), key=lambda x: (x.start, -x.pitch))
    mids = [x.pitch for x in top[: n + 1]]
    return tuple(b - a for a, b in zip(mids, mids[1:]))


# ------------------------------------------------------------------------------------------ MIDI writer
def _varlen(v: int) -> bytes:
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, events: list[tuple[float, int, bytes]]) -> None:
    """Standard MIDI file, format 0: ``events`` are (seconds, order, message bytes); 120 qpm, 480 ppq, so
    960 ticks per second. ``order`` breaks ties (note-offs before note-ons at one instant)."""
    ticks_per_s = 960
    track = bytearray(b"\x00\xff\x51\x03" + (500000).to_bytes(3, "big"))  # tempo: 0.5 s per quarter
    last = 0
    for t, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        tick = max(last, int(round(t * ticks_per_s)))
        track += _varlen(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track
    path.write_bytes(data)


# ------------------------------------------------------------------------------------------ one clip
def _ensemble_programs(rng: np.random.Generator, ensemble: str, mean_pitches: list[float]) -> list[int]:
    regs = ENSEMBLES[ensemble]
    programs = []
    # one instrument choice per register for the whole clip (a choir is all "aahs" or all "oohs"), except the
    # broken consort, where every part draws its own
    chosen = {i: str(rng.choice(names)) for i, (_, names) in enumerate(regs)}
    for mp in mean_pitches:
        ri = next(i for i, (lo, _) in enumerate(regs) if mp >= lo)
        name = str(rng.choice(regs[ri][1])) if ensemble == "mixed" else chosen[ri]
        programs.append(GM[name])
    return programs


def midi_events(rng: np.random.Generator, sel: list[Note], programs: list[int], nparts: int, sec_per_q: float,
                level: float, seconds: float) -> tuple[list[tuple[float, int, bytes]], set[int]]:
    """The clip's MIDI events ((seconds, order, message), for ``write_midi``) and the parts that sound: a part
    with at least one note-on before ``seconds`` (the rendered clip's end). Draws from ``rng``: the reverb and
    chorus sends, each part's pan and volume, each note's velocity jitter, in that order."""
    channels = [c for c in range(16) if c != 9]  # channel 10 is percussion in GM
    events: list[tuple[float, int, bytes]] = []
    reverb = int(rng.integers(10, 110))
    chorus = int(rng.integers(0, 60))
    for p in range(min(nparts, len(channels))):
        ch = channels[p]
        pan = int(np.clip(64 + rng.normal(0, 30), 0, 127))
        vol = int(rng.integers(85, 121))
        events += [
            (0.0, 0, bytes([0xC0 | ch, programs[p]])),
            (0.0, 0, bytes([0xB0 | ch, 7, vol])),
            (0.0, 0, bytes([0xB0 | ch, 10, pan])),
            (0.0, 0, bytes([0xB0 | ch, 91, reverb])),
            (0.0, 0, bytes([0xB0 | ch, 93, chorus])),
        ]
    end_s = seconds + 0.5
    sounding: set[int] = set()
    for n in sel:
        if n.part >= len(channels) or not 0 <= n.pitch <= 127:
            continue
        ch = channels[n.part]
        t0 = n.start * sec_per_q
        t1 = min((n.start + n.dur) * sec_per_q, end_s)
        if t0 >= end_s:
            continue
        vel = int(np.clip(n.velocity * level + rng.normal(0, 6), 20, 127))
        events.append((t0, 2, bytes([0x90 | ch, n.pitch, vel])))
        events.append((max(t1 - 0.005, t0 + 0.01), 1, bytes([0x80 | ch, n.pitch, 0])))
        if t0 < seconds:  # the WAV is cut at ``seconds``: a later note-on is not heard
            sounding.add(n.part)
    return events, sounding


def clip_tags(programs: list[int], sounding: set[int]) -> list[str]:
    """The instrument families (``TAGS`` order) of the parts in ``sounding`` (part -> ``programs[part]``)."""
    present = {PROGRAM_TAG[programs[p]] for p in sounding}
    return [t for t in TAGS if t in present]


def synthesize(events: list[tuple[float, int, bytes]], soundfont: str, what: str) -> np.ndarray:
    """FluidSynth render of ``events`` at SAMPLE_RATE: float32 (frames, channels); ``what`` names the score in
    errors."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "clip.mid", Path(tmp) / "clip.wav"
        write_midi(mid, events)
        cmd = ["fluidsynth", "-ni", "-q", "-F", str(wav), "-T", "wav", "-O", "float", "-r", str(SAMPLE_RATE),
               "-g", "0.4", "-o", "synth.cpu-cores=1", "-o", "synth.reverb.active=1",
               "-o", "synth.chorus.active=1", soundfont, str(mid)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"fluidsynth failed on {what}: {res.stderr.strip()[-400:]}")
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, asked for {SAMPLE_RATE}")
    return audio


def render_clip(plan: ClipPlan, out_dir: Path, seconds: float, soundfont: str,
                parse_cache: dict | None = None) -> tuple[ClipResult, tuple[int, ...]]:
    """Render one clip to ``out_dir/audio/<class>/<group>__<index>.wav``; returns its row and the melody
    signature (used to skip chorale tunes already taken)."""
    rng = np.random.default_rng(plan.seed)
    src = plan.source
    if parse_cache is not None and src.path in parse_cache:
        notes, bars, length, marks = parse_cache[src.path]
    else:
        notes, bars, length, marks = score_notes(_parse(src.path))
        if parse_cache is not None:  # a class takes several clips from some files (quartets)
            parse_cache[src.path] = (notes, bars, length, marks)
    if not notes:
        raise RuntimeError(f"{src.path}: no notes")
    sig = melody_signature(notes)

    # tempo: the score's mark in force at the start, else the class's range; then the performer's factor
    lo_q, hi_q = CLASS_TEMPO[src.label]
    factor = float(rng.uniform(0.85, 1.15))
    fallback = float(rng.uniform(lo_q, hi_q))
    first_q = marks[0][1] if marks else fallback
    need_first = (seconds + 1.0) / (60.0 / float(np.clip(first_q * factor, 40.0, 220.0)))
    # a bar line that leaves a whole clip before the end (the n-th take from one file starts elsewhere);
    # short pieces (chorales, dance tunes) start from the top, as they are sung and played
    candidates = [b for b in bars if b <= length - need_first]
    start = 0.0
    if candidates and (plan.take or src.label not in ("chorale", "fiddle")):
        start = float(candidates[int(rng.integers(len(candidates)))])
    in_force = [q for off, q in marks if off <= start + 1e-6]
    from_score = bool(in_force)
    base = in_force[-1] if in_force else fallback
    qpm = float(np.clip(base * factor, 40.0, 220.0))
    sec_per_q = 60.0 / qpm
    need_q = (seconds + 1.0) / sec_per_q

    # the excerpt, looping the piece from the top when it ends first
    transpose = int(rng.integers(-2, 3))
    level = float(rng.uniform(0.75, 1.1))
    sel: list[Note] = []
    looped = False
    offset = -start
    while offset < need_q:
        for n in notes:
            s = n.start + offset
            if s + n.dur <= 0 or s >= need_q:
                continue
            sel.append(Note(max(s, 0.0), n.dur + min(s, 0.0), n.pitch + transpose, n.velocity, n.part))
        offset += length
        looped = looped or offset < need_q
        if length <= 0:
            break
    nparts = max(n.part for n in notes) + 1
    mean_pitch = []
    for p in range(nparts):
        ps = [n.pitch for n in sel if n.part == p] or [n.pitch + transpose for n in notes if n.part == p] or [60]
        mean_pitch.append(float(np.mean(ps)))

    names, weights = zip(*CLASS_ENSEMBLES[src.label])
    w = np.asarray(weights, dtype=float)
    ensemble = str(rng.choice(names, p=w / w.sum()))
    programs = _ensemble_programs(rng, ensemble, mean_pitch)
    events, sounding = midi_events(rng, sel, programs, nparts, sec_per_q, level, seconds)

    rel = Path("audio") / src.label / f"{src.group}__{plan.index:03d}.wav"
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    audio = synthesize(events, soundfont, src.path)
    mono = audio.mean(axis=1)
    n_out = int(round(seconds * SAMPLE_RATE))
    mono = np.pad(mono[:n_out], (0, max(0, n_out - len(mono))))
    peak = float(np.abs(mono).max())
    if peak < 1e-4:
        raise RuntimeError(f"{src.path}: silent clip (start {start} quarters)")
    mono = mono * (float(rng.uniform(0.3, 0.9)) / peak)  # the recording's level
    import soundfile as sf

    tmp_dest = dest.with_suffix(".tmp.wav")
    sf.write(tmp_dest, mono, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp_dest, dest)
    row = ClipResult(
        path=rel.as_posix(), label=src.label, artist=src.group, track_id=f"{src.group}__{plan.index:03d}",
        piece=src.piece, composer=src.composer, source=src.path, start_quarter=start, tempo_qpm=round(qpm, 2),
        tempo_from_score=from_score, transpose=transpose, ensemble=ensemble,
        programs=" ".join(str(p) for p in programs), looped=looped, parts=nparts, notes=len(sel),
        labels=";".join(clip_tags(programs, sounding)),
    )
    return row, sig


def _render_class(args: tuple[str, list[ClipPlan], str, float, str, int]) -> list[ClipResult]:
    """Render one class's clips in order (chorales: skipping tunes already taken) until it has ``clips``."""
    label, plans, out_dir, seconds, soundfont, clips = args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows: list[ClipResult] = []
    seen: set[tuple[int, ...]] = set()
    cache: dict = {}
    for plan in plans:
        if len(rows) >= clips:
            break
        t = time.perf_counter()
        try:
            row, sig = render_clip(plan, Path(out_dir), seconds, soundfont, cache)
        except Exception as err:  # one unreadable score must not end the build: take the next candidate
            log.warning("%s: skipped (%s)", plan.source.path, err)
            continue
        if label == "chorale" and sig in seen:
            (Path(out_dir) / row.path).unlink()
            log.info("%s: tune already taken, skipped", plan.source.path)
            continue
        seen.add(sig)
        rows.append(row)
        log.info("%s %d/%d %s (%.1fs)", label, len(rows), clips, plan.source.path, time.perf_counter() - t)
    if len(rows) < clips:
        log.warning("%s: only %d of %d clips could be made", label, len(rows), clips)
    return rows


def write_csvs(out: Path, rows: list[dict]) -> None:
    """``out/clips.csv`` (single-label: the class in ``label``; every ClipResult column but ``labels``) and
    ``out/clips_tags.csv`` (multi-label: the same rows with ``labels``, the class moved to a ``genre`` column:
    the csv layout refuses a file with both ``label`` and ``labels``)."""
    single = [k for k in rows[0] if k != "labels"]
    multi = ["genre" if k == "label" else k for k in rows[0]]
    for name, fields in (("clips.csv", single), ("clips_tags.csv", multi)):
        with open(out / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({**r, "genre": r["label"]})


def tag_counts(rows: list[dict]) -> dict[str, int]:
    """Clips per tag (``TAGS`` order) of rows with a ``;``-joined ``labels`` cell."""
    return {t: sum(t in r["labels"].split(";") for r in rows) for t in TAGS}


def build(out: Path, clips: int, seconds: float, seed: int, workers: int, soundfont: str,
          progress: Callable[[str], None] = print) -> dict:
    if shutil.which("fluidsynth") is None:
        raise SystemExit("fluidsynth not found: apt-get install -y fluidsynth fluid-soundfont-gm")
    if not Path(soundfont).is_file():
        raise SystemExit(f"soundfont {soundfont} not found: apt-get install -y fluid-soundfont-gm")
    import music21

    t0 = time.perf_counter()
    sources = find_sources()
    plans = plan_clips(sources, clips, seed)
    if (out / "audio").exists():
        shutil.rmtree(out / "audio")  # a rebuild starts clean: no clip of an older plan survives
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, [p for p in plans if p.label == c], str(out), seconds, soundfont, clips) for c in CLASSES]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            per_class = list(ex.map(_render_class, jobs))
    else:
        per_class = [_render_class(j) for j in jobs]
    rows = [r for rs in per_class for r in rs]
    write_csvs(out, [asdict(r) for r in rows])
    summary = {
        "classes": {c: sum(r.label == c for r in rows) for c in CLASSES},
        "groups": {c: len({r.artist for r in rows if r.label == c}) for c in CLASSES},
        "ensembles": {c: sorted({r.ensemble for r in rows if r.label == c}) for c in CLASSES},
        "tags": tag_counts([asdict(r) for r in rows]),
        "tempo_from_score": sum(r.tempo_from_score for r in rows),
        "clips": len(rows),
        "seconds": seconds,
        "sample_rate": SAMPLE_RATE,
        "seed": seed,
        "music21": music21.__version__,
        "fluidsynth": subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
        "soundfont": soundfont,
        "soundfont_sha256_head": hashlib.sha256(Path(soundfont).open("rb").read(1 << 20)).hexdigest(),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    (out / "build.json").write_text(json.dumps(summary, indent=2))
    progress(json.dumps({k: summary[k] for k in ("classes", "groups", "build_seconds")}))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/work/data/realmusic"), help="output folder")
    p.add_argument("--clips", type=int, default=40, help="clips per class")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (pieces, offsets, ensembles...)")
    p.add_argument("--workers", type=int, default=1, help="processes (one class per process)")
    p.add_argument("--soundfont", default=SOUNDFONT, help="General MIDI .sf2 file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.clips < 1 or args.seconds <= 0:
        p.error("--clips and --seconds must be positive")
    build(args.out, args.clips, args.seconds, args.seed, args.workers, args.soundfont)
    return 0


if __name__ == "__main__":
    sys.exit(main())
