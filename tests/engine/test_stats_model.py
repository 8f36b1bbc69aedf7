"""The ``stats`` architecture: pooled per-band statistics (checked against NumPy and librosa), in-model
standardisation (against a hand computation), any window length, config errors, and that it learns."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engine.config import ConfigError, from_dict
from engine.models import ARCHS, ModelConfig, build_model
from engine.models.stats import Stats, pooled_statistics

SR = 22050


# two cores shared with DataLoader and subprocesses: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(in_shape: tuple[int, int, int], num_classes: int = 3, **params) -> Stats:
    cls = ARCHS.get("stats")
    return cls(from_dict(cls.Config, params, "stats"), in_shape, num_classes)


def known_input(b: int = 3, c: int = 2, f: int = 5, frames: int = 17, constant: bool = True) -> np.ndarray:
    """Distinct scales per band (like MFCC c0 in dB vs chroma in [0, 1]) and a constant band (std 0)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, c, f, frames)) * np.logspace(-2, 2, c * f).reshape(1, c, f, 1)
    x += np.arange(c * f).reshape(1, c, f, 1) * 10.0
    if constant:
        x[:, 1, 2, :] = 7.5
    return x.astype(np.float32)


def test_pooled_statistics_equal_numpy_mean_and_population_std_channel_major():
    x = known_input()
    got = pooled_statistics(torch.from_numpy(x), ("mean", "std", "min", "max")).numpy()
    flat = x.reshape(3, 2 * 5, 17).astype(np.float64)  # channel-major: index c * F + f
    want = np.concatenate(
        [flat.mean(-1), flat.std(-1, ddof=0), flat.min(-1), flat.max(-1)], axis=1
    )  # (B, 4*C*F)
    assert got.shape == (3, 40)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.all(got[:, 10 + 1 * 5 + 2] == 0.0)  # the constant band: std exactly 0
    # ddof = 0, not 1: the two differ by sqrt(frames / (frames - 1)) ~ 3 % here
    assert not np.allclose(got[:, 10:20], flat.std(-1, ddof=1), rtol=1e-3)


def test_backbone_pooled_vector_is_the_stats_in_config_order_and_any_frame_count_works():
    net = backbone((2, 5, 17), stats=["std", "mean"]).eval()
    x = known_input()
    flat = x.reshape(3, 10, 17)
    want = np.concatenate([flat.std(-1), flat.mean(-1)], axis=1)
    np.testing.assert_allclose(net.pooled(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # the window length is free: 1 frame, the training crop, a whole track
        for frames in (1, 17, 2600):
            assert net(torch.randn(2, 2, 5, frames)).shape == (2, 3)
        one = pooled_statistics(torch.ones(1, 2, 5, 1) * 3.0)
    assert torch.equal(one, torch.cat([torch.full((1, 10), 3.0), torch.zeros(1, 10)], dim=1))


def test_eval_logits_are_a_linear_model_on_training_set_standardised_statistics():
    """norm_momentum null: the running statistics are the cumulative average over the training batches,
    and eval-mode logits are W (z - mean) / sqrt(var + eps) + b, computed here in NumPy."""
    torch.manual_seed(0)
    net = backbone((2, 5, 17))
    with torch.no_grad():  # a trained head, not the zero one it starts with
        net.classifier.weight.normal_()
        net.classifier.bias.normal_()
    # (no constant band: its running variance would be 0 and eps alone would scale it)
    batches = [known_input(constant=False) + i for i in range(3)]
    net.train()
    with torch.no_grad():
        for xb in batches:
            net(torch.from_numpy(xb))
    z = [np.concatenate([b.reshape(3, 10, 17).mean(-1), b.reshape(3, 10, 17).std(-1)], axis=1).astype(np.float64)
         for b in batches]  # fmt: skip
    mean = np.mean([zb.mean(0) for zb in z], axis=0)
    var = np.mean([zb.var(0, ddof=1) for zb in z], axis=0)  # BatchNorm keeps the unbiased batch variance
    np.testing.assert_allclose(net.norm.running_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.norm.running_var.numpy(), var, rtol=1e-4, atol=1e-4)

    net.eval()
    x = known_input(constant=False) * 1.5
    flat = x.reshape(3, 10, 17).astype(np.float64)
    zx = np.concatenate([flat.mean(-1), flat.std(-1)], axis=1)
    w = net.classifier.weight.detach().numpy().astype(np.float64)
    b = net.classifier.bias.detach().numpy().astype(np.float64)
    want = ((zx - mean) / np.sqrt(var + net.norm.eps)) @ w.T + b
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in net.parameters()) == 20 * 3 + 3  # a linear model: no affine BatchNorm


def test_a_one_clip_training_batch_is_standardised_by_the_running_statistics():
    net = backbone((2, 5, 17)).train()
    with torch.no_grad():
        net(torch.from_numpy(known_input()))
        before = net.norm.running_mean.clone()
        x = torch.from_numpy(known_input(b=1))
        got = net(x)
        net.eval()
        want = net(x)
    assert torch.equal(net.norm.running_mean, before)
    torch.testing.assert_close(got, want)


def test_hidden_layer_mlp_and_the_classifier_name():
    net = backbone((1, 72, 130), hidden=32, dropout=0.2, num_classes=6)
    assert net.classifier.in_features == 32 and net.classifier.out_features == 6
    assert net.dense[0].in_features == 144  # mean and std of 72 bands


@pytest.mark.parametrize("hidden", [0, 16])
def test_an_untrained_model_predicts_uniform_probabilities(hidden):
    """The head starts at zero, as a logistic regression's solver does: loss ln K at step 0, whatever the
    inputs' scale."""
    net = backbone((2, 5, 17), num_classes=4, hidden=hidden).eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(known_input()) * 1e3)
    assert torch.equal(logits, torch.zeros(3, 4))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"stats": ["median"]}, "stats must be distinct names from mean, std, min, max"),
        ({"stats": ["mean", "mean"]}, "stats must be distinct"),
        ({"stats": []}, "at least one"),
        ({"hidden": -1}, "hidden must be >= 0"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"norm_momentum": 0.0}, "norm_momentum must be in"),
        ({"hiden": 3}, "hiden"),
    ],
)
def test_bad_params_fail_fast_with_the_reason(params, message):
    cfg = ModelConfig(arch="stats", params=params)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def mixture(seconds: float = 4.0) -> np.ndarray:
    """Two notes with harmonics over a little noise: a clip with non-trivial MFCC and chroma."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(3)
    y = sum(0.3 / k * np.sin(2 * np.pi * k * 220.0 * t) for k in range(1, 6))
    y = y + sum(0.2 / k * np.sin(2 * np.pi * k * 329.63 * t) * (t > seconds / 2) for k in range(1, 4))
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def test_in_engine_stats_are_the_classic_baseline_features_librosa_mfcc_and_chroma_mean_std():
    """The model's pooled vector for [mfcc (+ deltas), chroma] equals librosa's MFCC(20) / delta / chroma_stft
    mean and population std over the whole clip: the features ``benchmarks/realmusic/baseline.py`` uses."""
    y = mixture()
    cfg = from_dict(
        ModelConfig,
        {"arch": "stats", "features": {"features": ["mfcc", "chroma"], "deltas": 2, "stack": "freq"}},
    )
    model = build_model(cfg, 6, SR, len(y)).eval()
    with torch.no_grad():
        pooled = model.backbone.pooled(model.features(torch.from_numpy(y)[None]))[0].numpy().astype(np.float64)
    mfcc = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=20, n_fft=2048, hop_length=512, n_mels=128)
    bands = np.concatenate(
        [
            mfcc,
            librosa.feature.delta(mfcc, width=9, order=1),
            librosa.feature.delta(mfcc, width=9, order=2),
            librosa.feature.chroma_stft(y=y, sr=SR, n_fft=2048, hop_length=512, tuning=0.0),
        ]
    ).astype(np.float64)  # (72, frames)
    want = np.concatenate([bands.mean(1), bands.std(1, ddof=0)])
    assert pooled.shape == want.shape == (144,)
    np.testing.assert_allclose(pooled, want, atol=0.01)  # the front end is within 0.01 of librosa per frame


def test_stats_learns_classes_that_differ_only_in_a_small_scale_band_with_plain_sgd():
    """Standardisation inside the model: the class is in the std of a band 10^4 times smaller than the
    others, yet a linear layer trained by SGD at lr 0.1 separates the classes within 60 steps."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)

    def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 1, 4, 50, generator=gen) * torch.tensor([100.0, 50.0, 0.01, 80.0]).view(1, 1, 4, 1)
        x[:, 0, 2] *= (1.0 + 2.0 * y).view(n, 1)  # class 1: band 2 three times as spread
        return x, y

    net = backbone((1, 4, 50), num_classes=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(60):
        x, y = batch()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = batch(400)
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.97
