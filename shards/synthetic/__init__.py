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

Modules: :mod:`~shards.synthetic.recipes` (the genres as data: musical vocabulary, instruments, recipes),
:mod:`~shards.synthetic.render` (one clip from a recipe: :func:`generate_clip`) and
:mod:`~shards.synthetic.corpus` (a whole tree on disk, in parallel: :func:`make_corpus`;
``python tools/make_synthetic.py --help`` is its command line, :func:`main`).
"""

from shards.synthetic.corpus import FORMATS, MP3_SAMPLE_RATES, clip_path, clip_seed, main, make_corpus
from shards.synthetic.recipes import CHORDS, GENRES, OVERLAP, PROFILES, RECIPES, SCALES, Kit, Recipe, Voice
from shards.synthetic.render import generate_clip

__all__ = [
    "CHORDS",
    "FORMATS",
    "GENRES",
    "MP3_SAMPLE_RATES",
    "OVERLAP",
    "PROFILES",
    "RECIPES",
    "SCALES",
    "Kit",
    "Recipe",
    "Voice",
    "clip_path",
    "clip_seed",
    "generate_clip",
    "main",
    "make_corpus",
]
