"""Training throughput per architecture: from shards (loader + front end + step) vs in-memory input.

For each architecture, in one run:
- ``loader``: clips/s of the shard reader alone (3-s int16 crops, batch B),
- ``step (memory)``: clips/s of the training step (front end + augmentation + forward + backward + Adam)
  on one batch kept on the device,
- ``end to end``: clips/s of the same step fed by the shard reader (pinned int16 -> device),
- ``loader share``: 1 - memory/end-to-end time; near 0 means the loader is never the bottleneck;
- ``multi-label step``: clips/s of the in-memory step of the same architecture with a 50-tag head trained
  with the multi-label task (binary cross-entropy on multi-hot targets, :mod:`engine.tasks`), and its ratio
  to the single-label step (10 genres, softmax cross-entropy): the cost of tagging over genres.

    python benchmarks/bench_train.py [--models cnn,crnn] [--device cuda] [--precision bf16] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import from_dict, load_yaml  # noqa: E402
from engine.distributed import AUTOCAST_DTYPES, PRECISIONS, canonical_precision  # noqa: E402
from engine.models import ModelConfig, build_model  # noqa: E402
from engine.tasks import get_task  # noqa: E402
from shards import format as fmt  # noqa: E402
from shards.crop_stream import CropStream  # noqa: E402
from shards.reader import make_loader  # noqa: E402


def write_random_shards(out: Path, tracks: int, seconds: float, sr: int, per_shard: int, classes: int = 10) -> Path:
    """A shard set of noise-like PCM (throughput does not depend on content)."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    labels = [f"g{i}" for i in range(classes)]
    entries = []
    n = int(seconds * sr)
    # one noise pool, each track a different slice of it: drawing 32k x 4 s of fresh normals took longer than
    # the H100 session's cap (the content does not change the throughput)
    pool = (rng.standard_normal(n + 997 * 64) * 0.1).astype(np.float32)
    for s in range(0, tracks, per_shard):
        name = fmt.shard_name("train", s // per_shard)
        with tarfile.open(out / name, "w") as tar:
            for i in range(s, min(tracks, s + per_shard)):
                key = f"t{i:07d}"
                off = 997 * (i % 64)
                wave = pool[off : off + n]
                meta = {"key": key, "label": labels[i % classes], "label_index": i % classes, "path": key, "orig_sample_rate": sr,
                        "channels": 1, "duration": seconds, "num_samples": n, "track_id": None, "artist": None,
                        "split": "train", "fold": -1}  # fmt: skip
                for ext, data in ((fmt.PCM_EXT, fmt.encode_pcm(wave)), (fmt.META_EXT, fmt.encode_meta(meta))):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        entries.append({"name": name, "samples": min(tracks, s + per_shard) - s, "bytes": (out / name).stat().st_size, "sha256": ""})
    manifest = {
        "format_version": fmt.FORMAT_VERSION, "kind": "audio", "sample_rate": sr, "labels": labels, "folds": 0,
        "splits": {"train": {"tracks": tracks, "seconds": tracks * seconds, "per_label": {}, "shards": entries}},
        "skipped": [], "source": "random", "layout": "bench", "command": "bench_train",
    }  # fmt: skip
    (out / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def model_config(arch: str) -> ModelConfig:
    path = ROOT / "configs" / f"{arch}.yaml"
    section = load_yaml(path).get("model", {}) if path.is_file() else {"arch": arch}
    return from_dict(ModelConfig, section, "model")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


TAGS = 50  # the multi-label run's tag vocabulary (MagnaTagATune / MTG-Jamendo top-50 size)


def make_step(arch: str, task_name: str, classes: int, args: argparse.Namespace, device: torch.device):
    """A training step of ``arch`` with ``classes`` outputs and the task's targets and loss: ``step(wave, batch)``."""
    sr, seg = 22050, int(3.0 * 22050)
    torch.manual_seed(0)
    model = build_model(model_config(arch), classes, sr, seg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = AUTOCAST_DTYPES[args.precision]
    task = get_task(task_name)

    def step(wave: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = task.targets(batch, classes, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, mixed = model(wave, targets)
        loss = task.loss(logits, mixed, 0.0, None)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def time_steps(step, wave: torch.Tensor, batch: dict[str, torch.Tensor], steps: int, device: torch.device) -> float:
    """Seconds per in-memory step (two warm-up steps first)."""
    for _ in range(2):
        step(wave, batch)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(wave, batch)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench_arch(arch: str, shards: Path, args: argparse.Namespace, device: torch.device) -> dict:
    seg = int(3.0 * 22050)
    model, step = make_step(arch, "singlelabel", 10, args, device)

    stream = CropStream(str(shards), "train", crop_samples=seg, batch_size=args.batch_size, seed=0)
    loader = make_loader(stream, num_workers=args.workers)
    # in-memory step
    batch = next(iter(loader))
    wave = batch["wave"].to(device)
    # and the same step with a 50-tag head on multi-hot targets (about 3 tags per clip), same clips; the two
    # are timed in alternating blocks so that a busy or throttling machine slows both alike
    gen = torch.Generator().manual_seed(0)
    tags = {"targets": (torch.rand(wave.shape[0], TAGS, generator=gen) < 3 / TAGS).float()}
    _, ml_step = make_step(arch, "multilabel", TAGS, args, device)
    blocks = 4
    per = max(1, args.steps // blocks)
    t_mem = t_ml = 0.0
    for _ in range(blocks):
        t_mem += time_steps(step, wave, {"label": batch["label"]}, per, device) / blocks
        t_ml += time_steps(ml_step, wave, tags, per, device) / blocks
    # loader alone
    t0, n = time.perf_counter(), 0
    for i, b in enumerate(loader):
        n += b["wave"].shape[0]
        if i + 1 >= args.steps:
            break
    t_load = (time.perf_counter() - t0) / max(1, i + 1)
    # end to end
    t0, steps = time.perf_counter(), 0
    for b in loader:
        step(b["wave"].to(device, non_blocking=True), {"label": b["label"]})
        steps += 1
        if steps >= args.steps:
            break
    sync(device)
    t_e2e = (time.perf_counter() - t0) / steps
    B = args.batch_size
    return {
        "model": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loader_clips_s": B / t_load,
        "step_memory_clips_s": B / t_mem,
        "end_to_end_clips_s": B / t_e2e,
        "loader_share": max(0.0, 1.0 - t_mem / t_e2e),
        "multilabel_step_clips_s": B / t_ml,
        "multilabel_over_singlelabel": t_mem / t_ml,  # step-rate ratio, 50 tags / 10 genres
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn,rnn,crnn,resnet")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32")  # the old "no": fp32
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: by core count)")
    p.add_argument("--quick", action="store_true", help="few steps, two models")
    args = p.parse_args()
    if args.quick:
        args.steps = 3
        args.models = "cnn,crnn" if args.models == p.get_default("models") else args.models
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tracks = max(4 * args.batch_size * (args.steps + 2), 64)
        shards = write_random_shards(Path(tmp) / "shards", tracks=tracks, seconds=4.0, sr=22050, per_shard=64)
        rows = [bench_arch(a.strip(), shards, args, device) for a in args.models.split(",") if a.strip()]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    print(f"# bench_train: {machine}, device {device}, precision {args.precision}, batch {args.batch_size}, 3-s crops")
    print("| model | params | loader clips/s | step (memory) clips/s | end-to-end clips/s | loader share "
          f"| multi-label step ({TAGS} tags) clips/s | multi / single step rate |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['loader_clips_s']:.0f} | {r['step_memory_clips_s']:.1f} | "
              f"{r['end_to_end_clips_s']:.1f} | {100 * r['loader_share']:.0f}% | {r['multilabel_step_clips_s']:.1f} | "
              f"{r['multilabel_over_singlelabel']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
