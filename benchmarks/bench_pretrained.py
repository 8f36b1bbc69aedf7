"""Pretrained musicnn embedding throughput: the engine's port vs the original TensorFlow ``musicnn.extractor``,
on the same files, in one run.

Corpus: N synthetic 30-s music clips (``shards.synthetic``, 3 genres) written as WAV at ``--file-rate`` Hz
(16 kHz by default: both sides then skip resampling; 22050 adds it to both). Model: ``MSD_musicnn`` (the
musicnn 0.1.0 wheel's weights; the engine converts them, the original restores them). Unit: 3-s windows
(187-frame patches; a 30-s clip has 10 on both sides).

Measured, on the same cores:

- ``tf extractor``: ``musicnn.extractor.extractor(file, "MSD_musicnn", input_length=3, extract_features=True)``
  per file, as a user calls it for embeddings (graph built and checkpoint restored per call, librosa load +
  mel, every feature fetched), with its float16 cast patched to float32 (tools/musicnn_reference.py; the
  unpatched cast overflows on loud music). Runs in the TensorFlow environment
  (``$GENRE_ENGINE_TF_PYTHON``, default /work/tfenv/bin/python) in a subprocess: TensorFlow is never imported
  by the engine.
- ``tf graph``: the same graph built once, one session, each file's librosa log-mel patches run in batches of
  ``--batch-size`` (the original model's own speed, without the per-call setup); mel and graph time apart.
- ``engine embed``: ``python -m engine embed musicnn:MSD_musicnn`` over a shard set of the same files (every
  window, the default meanmax embedding written as feature shards); the ingest (decode + shard writing, once
  per collection) is reported apart.
- ``engine model``: the engine model alone (musicnn feature + backbone ``outputs()``) on int16 windows
  ``[batch, 47616]`` already in memory.

A sanity line compares the first window of each file (the one both sides cut identically) between the two:
the original STFTs the whole file and cuts frames, the engine STFTs each window, so only the patch's last
frame differs in context.

    python benchmarks/bench_pretrained.py [--quick] [--files 8] [--batch-size 32] [--device cuda] [--skip-tf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "MSD_musicnn"
TF_ENV = "GENRE_ENGINE_TF_PYTHON"
TF_DEFAULT = "/work/tfenv/bin/python"
GENRES = ("classical", "metal", "reggae")


# ------------------------------------------------------------------------------------------ the TF side
def tf_worker(files: list[str], batch_size: int, out_npz: str) -> dict:
    """Runs inside the TensorFlow environment (no torch, no engine): times the original two ways."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    sys.path.insert(0, str(ROOT / "tools"))
    import contextlib
    import io

    import tensorflow as tf
    from musicnn import configuration, extractor, models
    from musicnn_reference import N_FRAMES, _patched_batch_data  # the float16 cast patched to float32

    batch_data = _patched_batch_data(float16=False)
    extractor.batch_data = batch_data
    first: dict[str, list[np.ndarray]] = {"taggram": [], "penultimate": [], "meanmax": []}
    windows, t0 = 0, time.perf_counter()
    for path in files:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            taggram, _tags, feats = extractor.extractor(path, model=MODEL, input_length=3, extract_features=True)
        windows += taggram.shape[0]
        first["taggram"].append(taggram[0])
        first["penultimate"].append(feats["penultimate"][0])
        first["meanmax"].append(np.concatenate([feats["mean_pool"][0], feats["max_pool"][0]]))
    ext = {"seconds": time.perf_counter() - t0, "windows": windows}

    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        out = models.define_model(x, is_training, MODEL, len(configuration.MSD_LABELS))
        fetch = [tf.nn.sigmoid(out[0]), out[6], out[7], out[8]]  # taggram, mean_pool, max_pool, penultimate
    sess = tf.compat.v1.Session()
    tf.compat.v1.train.Saver().restore(sess, os.path.join(os.path.dirname(models.__file__), MODEL) + "/")
    sess.run(fetch, feed_dict={x: np.zeros((1, N_FRAMES, 96), np.float32), is_training: False})  # warm-up
    mel_s = run_s = 0.0
    windows = 0
    first["logmel"] = []
    for path in files:
        t = time.perf_counter()
        batch, _ = batch_data(path, N_FRAMES, N_FRAMES)
        mel_s += time.perf_counter() - t
        first["logmel"].append(batch[0])  # (187, 96): the original's first patch, cut from the whole file's STFT
        t = time.perf_counter()
        for i in range(0, len(batch), batch_size):
            sess.run(fetch, feed_dict={x: batch[i : i + batch_size], is_training: False})
        run_s += time.perf_counter() - t
        windows += len(batch)
    np.savez(out_npz, **{k: np.stack(v) for k, v in first.items()})
    return {"extractor": ext, "graph": {"mel_seconds": mel_s, "run_seconds": run_s, "windows": windows},
            "tensorflow": tf.__version__}  # fmt: skip


def run_tf(files: list[Path], batch_size: int, tmp: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    python = os.environ.get(TF_ENV) or TF_DEFAULT
    if not Path(python).is_file():
        print(f"(no TensorFlow environment at {python}: set ${TF_ENV}; TF side skipped)")
        return None
    out_npz = tmp / "tf_first_windows.npz"
    cmd = [python, __file__, "--tf-worker", "--batch-size", str(batch_size), "--tf-out", str(out_npz),
           *map(str, files)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        print(f"TF side failed:\n{res.stderr[-3000:]}")
        return None
    with np.load(out_npz) as z:
        return json.loads(res.stdout.strip().splitlines()[-1]), {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------ the engine side
def engine_side(files_dir: Path, tmp: Path, file_rate: int, batch_size: int, device: str, precision: str) -> dict:
    import torch

    from engine.checkpoint import load_checkpoint
    from engine.embed import embed
    from engine.embedding_parts import ModelPart, embedding_model
    from shards.audio import load_audio
    from shards.format import to_pcm16
    from shards.ingest import IngestConfig, run_ingest
    from shards.windows import window_starts

    t = time.perf_counter()
    run_ingest(IngestConfig(source=files_dir, out=tmp / "shards", layout="folder", sample_rate=file_rate,
                            split_ratios=(1.0, 0.0, 0.0), seed=0, progress=False))  # fmt: skip
    ingest_s = time.perf_counter() - t
    load_checkpoint(f"musicnn:{MODEL}")  # conversion on first use: not part of the timing
    t = time.perf_counter()
    res = embed(f"musicnn:{MODEL}", tmp / "shards", tmp / "emb", batch_size=batch_size, precision=precision,
                device=device, progress=False)  # fmt: skip
    embed_wall = time.perf_counter() - t

    # the model alone on windows in memory (and every output of each file's first window, for the sanity line)
    model, seg = embedding_model(load_checkpoint(f"musicnn:{MODEL}"), file_rate)
    runner = {name: ModelPart(model, name, torch.device(device), precision) for name in ("meanmax",)}["meanmax"]
    paths = sorted(p for p in files_dir.rglob("*.wav"))
    wins, first = [], []
    for p in paths:
        pcm = to_pcm16(load_audio(p, file_rate)[0])
        starts = window_starts(len(pcm), seg)
        wins += [pcm[s : s + seg] for s in starts]
        first.append(pcm[:seg])
    x = torch.from_numpy(np.stack(wins))
    runner(x[:batch_size])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(x), batch_size):
        runner(x[i : i + batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    model_s = time.perf_counter() - t
    with torch.inference_mode():
        outs = model.backbone.outputs(model.features(torch.from_numpy(np.stack(first)).to(device)))
    firsts = {k: outs[k].float().cpu().numpy() for k in ("taggram", "penultimate", "meanmax")}
    firsts["model"] = model  # for the backbone on the original's own patches
    return {
        "ingest_seconds": ingest_s,
        "embed": {"seconds": res["elapsed_s"], "wall_seconds": embed_wall, "windows": res["windows"]},
        "model": {"seconds": model_s, "windows": len(x)},
        "first_windows": firsts,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def make_files(root: Path, n: int, seconds: float, rate: int) -> Path:
    from shards.synthetic import make_corpus

    per = -(-n // len(GENRES))
    make_corpus(root, clips_per_genre=per, duration=seconds, sample_rate=rate, genres=GENRES, formats=("wav",),
                seed=0, workers=1, progress=False)  # fmt: skip
    for extra in sorted(root.rglob("*.wav"))[n:]:  # exactly n files
        extra.unlink()
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=12, help="30-s clips")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--file-rate", type=int, default=16000, help="Hz of the WAV files (16000: no resampling)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (both sides' graph runs)")
    p.add_argument("--device", default="cpu", help="the engine's device (the original runs on the CPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="engine autocast")
    p.add_argument("--quick", action="store_true", help="4 files")
    p.add_argument("--skip-tf", action="store_true")
    p.add_argument("--tf-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tf-out", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tf_worker:
        print(json.dumps(tf_worker(args.paths, args.batch_size, args.tf_out)))
        return 0

    sys.path.insert(0, str(ROOT))
    n = 4 if args.quick else args.files
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("GENRE_ENGINE_CACHE", str(tmp / "cache"))
        files_dir = make_files(tmp / "files", n, args.seconds, args.file_rate)
        files = sorted(files_dir.rglob("*.wav"))
        tf = None if args.skip_tf else run_tf(files, args.batch_size, tmp)
        ours = engine_side(files_dir, tmp, args.file_rate, args.batch_size, args.device, args.precision)

    rows = []
    rate = {}
    if tf is not None:
        info, tf_first = tf
        e, g = info["extractor"], info["graph"]
        rate["tf_extractor"] = e["windows"] / e["seconds"]
        rate["tf_graph"] = g["windows"] / (g["mel_seconds"] + g["run_seconds"])
        rate["tf_graph_model_only"] = g["windows"] / g["run_seconds"]
        rows += [("tf extractor (per file, as shipped)", e["windows"], e["seconds"], rate["tf_extractor"]),
                 ("tf graph (librosa mel + session)", g["windows"], g["mel_seconds"] + g["run_seconds"], rate["tf_graph"]),
                 ("tf graph, session only", g["windows"], g["run_seconds"], rate["tf_graph_model_only"])]  # fmt: skip
    em, mo = ours["embed"], ours["model"]
    rate["engine_embed"] = em["windows"] / em["seconds"]
    rate["engine_model"] = mo["windows"] / mo["seconds"]
    rows += [(f"engine embed ({args.device}, shards -> feature shards)", em["windows"], em["seconds"], rate["engine_embed"]),
             (f"engine model only ({args.device})", mo["windows"], mo["seconds"], rate["engine_model"])]  # fmt: skip
    print(f"\nmusicnn {MODEL} embeddings, {n} x {args.seconds:.0f}-s files at {args.file_rate} Hz, batch {args.batch_size}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {ours['threads']}")  # fmt: skip
    print(f"{'':52s} {'windows':>8s} {'seconds':>8s} {'windows/s':>10s}")
    for name, w, s, r in rows:
        print(f"{name:52s} {w:8d} {s:8.2f} {r:10.1f}")
    print(f"engine ingest of the files (decode + shards, once per collection): {ours['ingest_seconds']:.2f} s")
    ratios = {}
    if tf is not None:
        ratios = {
            "embed_vs_tf_extractor": rate["engine_embed"] / rate["tf_extractor"],
            "embed_vs_tf_graph": rate["engine_embed"] / rate["tf_graph"],
            "model_vs_tf_session": rate["engine_model"] / rate["tf_graph_model_only"],
        }
        print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
        import torch

        keys = ("taggram", "penultimate", "meanmax")
        model = ours["first_windows"]["model"]
        with torch.inference_mode():  # the port's backbone on the original's own log-mel patches
            x = torch.from_numpy(tf_first["logmel"]).transpose(1, 2).unsqueeze(1).to(next(model.parameters()).device)
            same = {k: v.float().cpu().numpy() for k, v in model.backbone.outputs(x).items()}
        diffs = {
            "same_patch": {k: float(np.abs(same[k] - tf_first[k]).max()) for k in keys},
            "own_windows": {k: float(np.abs(ours["first_windows"][k] - tf_first[k]).max()) for k in keys},
            "scale": {k: float(np.abs(tf_first[k]).max()) for k in keys},
        }
        print("first window of each file vs the original, max |diff| (taggram / penultimate / meanmax; values up to "
              + " / ".join(f"{diffs['scale'][k]:.3g}" for k in keys) + "):")
        print("  port on the original's patch: " + " / ".join(f"{diffs['same_patch'][k]:.1e}" for k in keys))
        print("  engine on its own window:     " + " / ".join(f"{diffs['own_windows'][k]:.1e}" for k in keys)
              + "  (the patch's last frame: whole-file STFT there, a window's zero-padded edge here)")
        ratios["first_window_max_abs_diff"] = diffs
    summary = {"files": n, "seconds": args.seconds, "file_rate": args.file_rate, "batch_size": args.batch_size,
               "device": args.device, "precision": args.precision, "windows_per_s": rate, **ratios,
               "ingest_seconds": ours["ingest_seconds"], "torch": ours["torch"],
               "tensorflow": tf[0]["tensorflow"] if tf else None}  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
