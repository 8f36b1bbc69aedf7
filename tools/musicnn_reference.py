#!/usr/bin/env python
"""Reference outputs of the ORIGINAL musicnn 0.1.0 (TensorFlow) for the port's parity tests.

Runs in a separate environment that has TensorFlow -- never the engine's (TensorFlow is a test reference
only); it imports neither torch nor the engine::

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 librosa
    /work/tfenv/bin/pip install --no-deps musicnn==0.1.0
    /work/tfenv/bin/python tools/musicnn_reference.py --out tests/fixtures/musicnn_reference.npz

It synthesises a few deterministic 3-s music-like clips at 16 kHz (one 187-frame patch = 47,616 samples
each; two of them full scale), stores them as int16, and for each of the four shipped models records:

* ``<model>/taggram``, ``<model>/penultimate``, ``<model>/mean_pool``, ``<model>/max_pool`` (musicnn) or
  ``<model>/pool5`` (vgg, flattened in TF's order): the original graph (``musicnn.models.define_model``,
  restored with ``tf.compat.v1.train.Saver`` exactly as ``musicnn.extractor.extractor`` does) fed the
  float32 log-mel ``logmel`` (librosa: ``melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96)``,
  then ``log10(1 + 10000 * mel)`` in float32);
* ``<model>/extractor_taggram``: the original's whole waveform-to-tags path, ``musicnn.extractor.extractor``
  on a 16-kHz WAV of the clip, with its float16 cast patched to float32 (see below);
* ``<model>/float16_taggram``: the same, unpatched: ``extractor.batch_data`` casts the mel spectrogram to
  float16 before ``10000 * mel``, which overflows to ``inf`` wherever a band's power exceeds 6.55 -- and
  ``float16_inf_fraction`` says how much of each clip's input that is.

The original runs under TensorFlow 2.x through ``tf.compat.v1`` with the legacy Keras layers
(``TF_USE_LEGACY_KERAS=1``, package ``tf-keras``), set here before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.layers needs Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import warnings  # noqa: E402

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", message=r".*(deprecated|legacy).*")  # tf.compat.v1.layers' notices

SR = 16000
N_FRAMES = 187
PATCH = 47616  # samples: 1 + 47616 // 256 = 187 frames
MODELS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")


# ---------------------------------------------------------------------------------------------------------
# deterministic music-like clips


def _env(n: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SR
    return np.minimum(t / attack, 1.0) * np.exp(-t / decay)


def _tone(f0: float, n: int, harmonics: int, rolloff: float, decay: float) -> np.ndarray:
    t = np.arange(n) / SR
    x = sum(rolloff**k * np.sin(2 * np.pi * f0 * (k + 1) * t + 0.3 * k) for k in range(harmonics))
    return x * _env(n, 0.005, decay)


def _saw(f0: float, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    return 2.0 * ((f0 * t) % 1.0) - 1.0


def _kick(n: int) -> np.ndarray:
    t = np.arange(n) / SR
    freq = 45 + 110 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(freq) / SR) * np.exp(-t / 0.12)


def _noise_burst(rng: np.random.Generator, n: int, decay: float, highpass: bool) -> np.ndarray:
    x = rng.standard_normal(n)
    if highpass:
        x = np.diff(x, prepend=0.0)
    return x * _env(n, 0.001, decay)


def _place(out: np.ndarray, x: np.ndarray, start: int, gain: float) -> None:
    end = min(len(out), start + len(x))
    if start < end:
        out[start:end] += gain * x[: end - start]


def _midi(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def synth_clips(seed: int = 12) -> tuple[list[str], np.ndarray]:
    """Four 47,616-sample clips at 16 kHz as int16 ``(4, 47616)``: piano-like arpeggios (quiet), drums and
    bass, and two full-scale ones (distorted power chords with drums; a square-wave synth over a
    four-on-the-floor kick)."""
    rng = np.random.default_rng(seed)
    n = PATCH
    beat = int(SR * 60 / 120)  # 120 bpm
    clips = []

    piano = np.zeros(n)
    for i, m in enumerate([60, 64, 67, 72, 65, 69, 72, 77, 67, 71, 74, 79]):
        _place(piano, _tone(_midi(m), n // 3, 8, 0.55, 0.6), i * beat // 2, 0.25)
    clips.append(("piano_quiet", 0.05 * piano / np.abs(piano).max()))

    groove = np.zeros(n)
    for b in range(n // beat + 1):
        _place(groove, _kick(beat), b * beat, 0.8)
        if b % 2:
            _place(groove, _noise_burst(rng, beat // 2, 0.05, False), b * beat, 0.3)
        for h in range(2):
            _place(groove, _noise_burst(rng, beat // 4, 0.01, True), b * beat + h * beat // 2, 0.1)
        bass = np.tanh(1.5 * _saw(_midi([36, 36, 43, 41][b % 4]), beat)) * _env(beat, 0.01, 0.4)
        _place(groove, bass, b * beat, 0.35)
    clips.append(("drums_bass", 0.5 * groove / np.abs(groove).max()))

    rock = np.zeros(n)
    for b in range(n // beat + 1):
        root = [40, 40, 43, 45][(b // 2) % 4]
        chord = sum(_saw(_midi(root + k), beat) for k in (0, 7, 12))
        _place(rock, np.tanh(4.0 * chord) * _env(beat, 0.005, 1.0), b * beat, 0.6)
        _place(rock, _kick(beat), b * beat, 0.9)
        if b % 2:
            _place(rock, _noise_burst(rng, beat // 2, 0.08, False), b * beat, 0.4)
    clips.append(("rock_fullscale", np.clip(1.6 * rock / np.abs(rock).max(), -1.0, 1.0)))

    electro = np.zeros(n)
    step = beat // 4
    for s in range(n // step + 1):
        m = [57, 60, 64, 69, 72, 69, 64, 60][s % 8]
        t = np.arange(step) / SR
        sq = np.sign(np.sin(2 * np.pi * _midi(m) * t)) * _env(step, 0.002, 0.15)
        _place(electro, sq, s * step, 0.5)
        if s % 4 == 0:
            _place(electro, _kick(beat), s * step, 1.0)
        _place(electro, _noise_burst(rng, step // 2, 0.02, True), s * step + step // 2, 0.15)
    clips.append(("electro_fullscale", np.tanh(3.0 * electro / np.abs(electro).max())))

    names = [c[0] for c in clips]
    waves = np.stack([np.round(np.clip(c[1], -1.0, 32767 / 32768) * 32768).astype(np.int16) for c in clips])
    return names, waves


# ---------------------------------------------------------------------------------------------------------
# the original model


def librosa_logmel(wave16k: np.ndarray) -> np.ndarray:
    """float32 ``(frames, 96)``: ``musicnn.extractor.batch_data``'s input without its float16 cast."""
    return np.log10(10000 * _mel(wave16k).astype(np.float32) + 1)


def run_graph(model: str, logmel: np.ndarray) -> dict[str, np.ndarray]:
    """The original graph, restored like ``musicnn.extractor.extractor`` does, on a batch ``(B, 187, 96)``."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    from musicnn import configuration, models

    labels = configuration.MSD_LABELS if "MSD" in model else configuration.MTT_LABELS
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        out = models.define_model(x, is_training, model, len(labels))
        fetch = {"taggram": tf.nn.sigmoid(out[0])}
        if "vgg" in model:
            fetch["pool5"] = tf.reshape(out[5], [-1, 2 * 1 * 128])  # NHWC flatten, as tf.layers.flatten
        else:
            fetch.update(mean_pool=out[6], max_pool=out[7], penultimate=out[8])
    pkg = os.path.dirname(models.__file__)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().restore(sess, os.path.join(pkg, model) + "/")
        got = sess.run(fetch, feed_dict={x: logmel, is_training: False})
    return {k: np.asarray(v, dtype=np.float32) for k, v in got.items()}


def _patched_batch_data(float16: bool):
    """``musicnn.extractor.batch_data`` as shipped (``float16=True``) or with the cast made float32."""
    import librosa

    def batch_data(audio_file, n_frames, overlap):
        audio, sr = librosa.load(audio_file, sr=SR)
        rep = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96).T
        rep = rep.astype(np.float16 if float16 else np.float32)
        with np.errstate(over="ignore"):
            rep = np.log10(10000 * rep + 1)
        last = rep.shape[0] - n_frames + 1
        batch = np.stack([rep[t : t + n_frames] for t in range(0, last, overlap)])
        return batch, rep

    return batch_data


def run_extractor(model: str, wav_path: str, float16: bool) -> np.ndarray:
    """``musicnn.extractor.extractor(wav, model)``'s taggram (float16 cast kept or patched out)."""
    import contextlib
    import io

    from musicnn import extractor

    original = extractor.batch_data
    extractor.batch_data = _patched_batch_data(float16)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            taggram, _tags = extractor.extractor(wav_path, model=model, input_length=3, extract_features=False)
    finally:
        extractor.batch_data = original
    return np.asarray(taggram, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output .npz (e.g. tests/fixtures/musicnn_reference.npz)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = p.parse_args(argv)

    import soundfile as sf
    import tensorflow as tf

    names, waves = synth_clips()
    floats = waves.astype(np.float32) / 32768.0
    logmel = np.stack([librosa_logmel(w) for w in floats])  # (clips, 187, 96)
    assert logmel.shape[1:] == (N_FRAMES, 96), logmel.shape
    result: dict[str, np.ndarray] = {
        "clip_names": np.array(names),
        "wave_int16": waves,
        "logmel": logmel.astype(np.float32),
        "versions": np.array([f"tensorflow {tf.__version__}", f"numpy {np.__version__}", _librosa_version()]),
    }
    with np.errstate(over="ignore"):
        f16 = np.log10(10000 * np.stack([_mel(w) for w in floats]).astype(np.float16) + 1)
    result["float16_inf_fraction"] = np.isinf(f16).reshape(len(names), -1).mean(axis=1).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, w in zip(names, waves):
            paths.append(os.path.join(tmp, f"{name}.wav"))
            sf.write(paths[-1], w, SR, subtype="PCM_16")
        for model in args.models:
            for key, value in run_graph(model, logmel).items():
                result[f"{model}/{key}"] = value
            result[f"{model}/extractor_taggram"] = np.concatenate(
                [run_extractor(model, path, float16=False) for path in paths]
            )
            result[f"{model}/float16_taggram"] = np.concatenate(
                [run_extractor(model, path, float16=True) for path in paths]
            )
            print(f"{model}: " + ", ".join(f"{k.split('/')[1]} {v.shape}" for k, v in result.items() if k.startswith(model)))
    np.savez_compressed(args.out, **result)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB); float16 inf fraction per clip: "
          + ", ".join(f"{n} {f:.3f}" for n, f in zip(names, result["float16_inf_fraction"])))
    return 0


def _mel(wave16k: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.melspectrogram(y=wave16k, sr=SR, hop_length=256, n_fft=512, n_mels=96).T


def _librosa_version() -> str:
    import librosa

    return f"librosa {librosa.__version__}"


if __name__ == "__main__":
    sys.exit(main())
