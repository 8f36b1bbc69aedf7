"""Cost of the on-device augmentation chain as a share of a training step.

Batch: B clips of 3 s at 22050 Hz (float32 wave [B, 66150]). The training step is what the augmentation
rides on: 128-mel log-mel (n_fft 2048, hop 512 -> [B, 1, 128, 130]) + a small 4-block CNN forward, backward
and Adam update (built inline). Reported, for the default recipe and for "everything on every sample":

- per-augmentation time (ms/batch) of shift, polarity, gain, noise, time_stretch, pitch_shift, freq_mask,
  time_mask, mixup;
- the full chain WaveAugment + SpecAugment + Mixup (ms/batch);
- the training step without augmentation, and the share ``chain / (chain + step)``.

Times are the best and the median of ``--reps`` runs; on a shared machine the best is the meaningful one.

    python benchmarks/bench_augment.py [--device cpu|cuda] [--batch 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import to_dict  # noqa: E402
from kernels.augment import AUGMENTATIONS, build_augment  # noqa: E402
from kernels.augment_config import AugmentConfig  # noqa: E402

SR = 22050
SECONDS = 3.0
CLASSES = 10


class TinyCNN(nn.Module):
    """4 x (conv3x3 - BN - ReLU - maxpool2) -> global average -> linear; ~100k parameters."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), classes: int = CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 1, mels, frames)
        return self.head(self.body(x).mean(dim=(2, 3)))


def timeit(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> tuple[float, float]:
    """(best, median) wall time of ``fn`` in ms (CUDA-synchronised); the best is robust to a busy machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[0], times[len(times) // 2]


def bench(
    cfg: AugmentConfig, label: str, device: torch.device, batch: int, reps: int
) -> dict[str, tuple[float, float] | float]:
    gen = torch.Generator().manual_seed(0)
    wave = (torch.randn(batch, int(SECONDS * SR), generator=gen) * 0.1).to(device)
    targets = F.one_hot(torch.randint(0, CLASSES, (batch,), generator=gen), CLASSES).float().to(device)
    mel = nn.Sequential(
        torchaudio.transforms.MelSpectrogram(SR, n_fft=2048, hop_length=512, n_mels=128, power=2.0),
        torchaudio.transforms.AmplitudeToDB(top_db=80.0),
    ).to(device)
    spec = mel(wave)[:, None]  # (B, 1, 128, frames)
    model = TinyCNN().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wave_aug, spec_aug, mixup = (m.to(device).train() for m in build_augment(cfg, SR))

    def step(aug: bool) -> None:
        x, y = wave, targets
        if aug:
            x = wave_aug(x)
        s = mel(x)[:, None]
        if aug:
            s = spec_aug(s)
            s, y = mixup(s, y)
        loss = torch.sum(-y * F.log_softmax(model(s), dim=-1), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def chain() -> None:
        mixup(spec_aug(spec), targets)
        wave_aug(wave)

    out: dict[str, tuple[float, float] | float] = {}
    for name in AUGMENTATIONS.names():
        m = AUGMENTATIONS.get(name).from_config(cfg, SR).to(device).train()
        if not m.is_active:
            continue
        if name == "mixup":
            out[name] = timeit(lambda m=m: m(spec, targets), device, reps)
        elif name in ("time_stretch", "pitch_shift", "freq_mask", "time_mask"):
            out[name] = timeit(lambda m=m: m(spec), device, reps)
        else:
            out[name] = timeit(lambda m=m: m(wave), device, reps)
    out["chain"] = timeit(chain, device, reps)
    out["step_no_aug"] = timeit(lambda: step(False), device, reps)
    out["step_with_aug"] = timeit(lambda: step(True), device, reps)
    out["share"] = out["chain"][0] / (out["chain"][0] + out["step_no_aug"][0])
    print(f"\n[{label}] batch {batch} x {SECONDS:g} s @ {SR} Hz, spec {tuple(spec.shape)}, device {device}")
    print(f"  {'ms per batch':<22} {'best':>8} {'median':>8}")
    for k, v in out.items():
        if isinstance(v, tuple):
            print(f"  {k:<22} {v[0]:8.2f} {v[1]:8.2f}")
    print(f"  chain share of step    {100 * out['share']:6.1f} %  (best chain / (best chain + best step))")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--batch", type=int, default=32, help="clips per batch (default 32)")
    ap.add_argument(
        "--reps", type=int, default=20, help="timed repetitions per measurement (median reported)"
    )
    ap.add_argument("--quick", action="store_true", help="5 repetitions: a smoke run")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    reps = 5 if args.quick else args.reps
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    default = AugmentConfig()
    everything = AugmentConfig(
        gain_p=1.0,
        noise_p=1.0,
        shift_p=1.0,
        polarity_p=1.0,
        time_stretch_p=1.0,
        pitch_shift_p=1.0,
        mixup_p=1.0,
    )
    results = {
        "default": bench(default, "default recipe", device, args.batch, reps),
        "all_on": bench(everything, "every augmentation on every sample", device, args.batch, reps),
        "config_default": to_dict(default),
        "device": str(device),
        "batch": args.batch,
        "reps": reps,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
