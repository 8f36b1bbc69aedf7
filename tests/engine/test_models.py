"""Architectures and the GenreModel wrapper, built from configs with the real front end and augmentations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.config import ConfigError, from_dict, load_yaml
from engine.models import ARCHS, GenreModel, ModelConfig, build_model, count_parameters
from engine.pretrained import musicnn

SR = 22050
SEGMENT = 3 * SR
REPO = Path(__file__).resolve().parents[2]

NO_AUG = {"enabled": False}
# small variants of every architecture (the test suite must stay fast on 2 CPU cores)
SMALL: dict[str, dict] = {
    "cnn": {"arch": "cnn", "params": {"channels": [8, 16], "hidden": 32}, "features": {"n_mels": 64}},
    "rnn": {
        "arch": "rnn",
        "params": {"hidden": 32, "cell": "lstm"},
        "features": {"features": ["mfcc", "chroma"], "n_mfcc": 20, "deltas": 2, "n_mels": 64},
    },
    "crnn": {
        "arch": "crnn",
        "params": {"channels": [8, 16, 16, 16], "rnn_hidden": 16},
        "features": {"n_mels": 64},
    },
    "resnet": {"arch": "resnet", "params": {"channels": 8}, "features": {"n_mels": 64}},
    "cnn1d": {
        "arch": "cnn1d",
        "params": {"channels": [32, 32], "hidden": 32},
        "features": {"features": ["mfcc"], "deltas": 1},
    },
    "stats": {"arch": "stats", "params": {}, "features": {"features": ["mfcc", "chroma"], "deltas": 2}},
}


# tiny models on a shared 2-core machine: intra-op threads cost more than they give
pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(arch: str, augment: dict | None = None, **params) -> ModelConfig:
    data = {**SMALL[arch], "augment": NO_AUG if augment is None else augment}
    data["params"] = {**data["params"], **params}
    return from_dict(ModelConfig, data)


def synthetic_clips(n_per_class: int, seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: low harmonic tones (110-220 Hz) with slow tremolo; class 1: bright noise bursts + 3 kHz tones.

    Returns int16 waves [2n, T] and labels [2n].
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    waves, labels = [], []
    for i in range(n_per_class):
        f0 = 110 + 110 * torch.rand((), generator=g)
        low = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in (1, 2, 3))
        low = low * (0.6 + 0.4 * torch.sin(2 * math.pi * 2.0 * t))
        waves.append(0.3 * low / low.abs().max())
        labels.append(0)
        noise = torch.randn(t.shape, generator=g)
        gate = (torch.sin(2 * math.pi * (4 + i) * t) > 0).float()
        high = 0.5 * noise * gate + torch.sin(2 * math.pi * (3000 + 200 * i) * t)
        waves.append(0.3 * high / high.abs().max())
        labels.append(1)
    wave = torch.stack(waves)
    return (wave * 32767).round().to(torch.int16), torch.tensor(labels)


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_every_arch_maps_int16_and_float_waves_of_any_length_to_logits(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(small_config(arch), 5, SR, SEGMENT).eval()
    assert isinstance(model, GenreModel) and model.arch == arch
    assert (model.num_classes, model.sample_rate, model.segment_samples) == (5, SR, SEGMENT)
    assert model.in_shape == model.frontend.out_shape(SEGMENT)
    wave16 = (torch.randn(2, SEGMENT) * 3000).clamp(-32768, 32767).to(torch.int16)
    with torch.no_grad():
        logits16 = model(wave16)
        logits32 = model(wave16.float() / 32768.0)
        longer = model(torch.randn(2, 7 * SR) * 0.1)  # a longer eval window than the training crop
        shorter = model(torch.randn(3, SR) * 0.1)
    assert logits16.shape == (2, 5) and logits16.dtype == torch.float32
    torch.testing.assert_close(logits16, logits32, atol=1e-5, rtol=1e-5)
    assert longer.shape == (2, 5) and shorter.shape == (3, 5)
    assert torch.isfinite(longer).all() and torch.isfinite(shorter).all()


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_every_arch_overfits_a_tiny_batch(arch: str) -> None:
    torch.manual_seed(0)
    wave, labels = synthetic_clips(4, 1.0)  # 8 clips of 1 s, 2 classes
    model = build_model(small_config(arch), 2, SR, wave.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(40):
        loss = F.cross_entropy(model(wave), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-5:]) / 5
    assert first > 0.5  # chance level for 2 classes is ln 2 = 0.69
    assert last < first / 5, f"{arch}: loss {first:.3f} -> {last:.3f}"
    model.eval()
    with torch.no_grad():
        assert (model(wave).argmax(1) == labels).float().mean() >= 0.75


def test_unknown_arch_error_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(ModelConfig, {"arch": "transformer"})
    msg = str(err.value)
    assert "transformer" in msg
    for name in ("cnn", "cnn1d", "crnn", "resnet", "rnn"):
        assert name in msg
    assert ARCHS.names() == ["cnn", "cnn1d", "crnn", "musicnn", "musicnn_vgg", "resnet", "rnn", "stats"]


def test_unknown_or_mistyped_params_are_rejected_before_building() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key.*chanels.*valid keys.*channels"):
        from_dict(ModelConfig, {"arch": "cnn", "params": {"chanels": [8]}})
    with pytest.raises(ConfigError, match=r"cell.*'transformer' is not one of \['gru', 'lstm'\]"):
        from_dict(ModelConfig, {"arch": "rnn", "params": {"cell": "transformer"}})
    with pytest.raises(ConfigError, match="dropout must be in"):
        from_dict(ModelConfig, {"arch": "resnet", "params": {"dropout": 1.5}})
    with pytest.raises(ConfigError, match="channels .*pools .*differ"):
        from_dict(ModelConfig, {"arch": "crnn", "params": {"channels": [8, 8]}})
    with pytest.raises(ValueError, match="unknown feature"):
        from_dict(ModelConfig, {"arch": "cnn", "features": {"features": ["spectral_flux"]}})


def test_arch_config_returns_the_typed_params() -> None:
    cfg = from_dict(ModelConfig, {"arch": "crnn", "params": {"pools": [[2, 1], [2, 1], [2, 1], [2, 1]]}})
    arch_cfg = cfg.arch_config()
    assert arch_cfg.pools == ((2, 1), (2, 1), (2, 1), (2, 1))
    assert arch_cfg.channels == (32, 64, 64, 64)  # default kept


def test_cnn_parameter_count_matches_a_hand_count() -> None:
    # default cnn on 128 log-mel bins, 10 classes: 3 conv (no bias) + 3 BN + dense 128 + classifier
    model = build_model(ModelConfig(arch="cnn"), 10, SR, SEGMENT)
    convs = 1 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9
    bns = 2 * (32 + 64 + 128)
    head = 128 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(model) == convs + bns + head == 110_698
    model.backbone.blocks[0][0].weight.requires_grad_(False)
    assert count_parameters(model) == 110_698 - 288
    assert count_parameters(model, trainable_only=False) == 110_698


def test_default_architectures_report_parameter_counts() -> None:
    counts = {}
    for arch, feats in (
        ("cnn", {}),
        ("crnn", {}),
        ("resnet", {}),
        ("rnn", {"features": ["mfcc", "chroma"], "deltas": 2}),
        ("cnn1d", {"features": ["mfcc"], "deltas": 2}),
    ):
        model = build_model(from_dict(ModelConfig, {"arch": arch, "features": feats}), 10, SR, SEGMENT)
        counts[arch] = count_parameters(model)
    print("default parameter counts (10 classes, 3 s at 22050 Hz):", counts)
    assert counts["cnn"] == 110_698
    # short-chunk ResNet at width 64: 7 blocks (64, 64, 128, 128, 128, 128, 256) -> ~2.2 M, the largest
    assert 2_000_000 < counts["resnet"] < 2_500_000
    assert max(counts, key=counts.get) == "resnet"
    assert all(n > 50_000 for n in counts.values())


def test_every_backbone_names_its_head_classifier() -> None:
    # the pretrained architectures are built at their shipped sizes (fixed input: 96 bands, 187 frames)
    pretrained = {
        "musicnn": musicnn.model_config("MSD_musicnn"),
        "musicnn_vgg": musicnn.model_config("MSD_vgg"),
    }
    assert set(ARCHS.names()) == set(SMALL) | set(pretrained)
    for arch in ARCHS.names():
        if arch in pretrained:
            model = build_model(pretrained[arch], 7, musicnn.SAMPLE_RATE, musicnn.WINDOW_SAMPLES)
        else:
            model = build_model(small_config(arch), 7, SR, SR)
        head = model.backbone.classifier
        assert isinstance(head, torch.nn.Linear) and head.out_features == 7


def test_train_mode_augments_and_eval_mode_is_deterministic() -> None:
    torch.manual_seed(0)
    aug = {"gain_p": 1.0, "noise_p": 1.0, "freq_masks": 2, "time_masks": 2, "mixup_p": 0.0}
    model = build_model(small_config("cnn", augment=aug, dropout=0.0), 3, SR, SR)
    wave, _ = synthetic_clips(2, 1.0)
    model.train()
    f1, f2 = model.features(wave), model.features(wave)
    assert not torch.equal(f1, f2)  # a fresh draw of gain / noise / masks per call
    model.eval()
    clean = model.features(wave)
    torch.testing.assert_close(clean, model.frontend(wave), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model(wave), model(wave))
    # the same seed reproduces the same augmented features
    model.train()
    model.reseed_augmentation(123)
    a = model.features(wave)
    model.reseed_augmentation(123)
    assert torch.equal(a, model.features(wave))


def test_mixup_mixes_targets_in_training_only() -> None:
    aug = {
        **{k: 0.0 for k in ("gain_p", "noise_p", "shift_p", "polarity_p", "time_stretch_p", "pitch_shift_p")}
    }
    aug.update(freq_masks=0, time_masks=0, mixup_p=1.0, mixup_alpha=1.0)
    model = build_model(small_config("cnn", augment=aug), 3, SR, SR)
    wave, labels = synthetic_clips(4, 1.0)
    targets = F.one_hot(labels, 3).float()
    model.train()
    logits, mixed = model(wave, targets)
    assert logits.shape == (8, 3) and mixed.shape == (8, 3)
    assert not torch.equal(mixed, targets)
    torch.testing.assert_close(mixed.sum(1), torch.ones(8))
    model.eval()
    logits, same = model(wave, targets)
    assert torch.equal(same, targets)
    with pytest.raises(ValueError, match=r"targets must be \[B, K\]"):
        model(wave, targets[:, :2])


def test_strip_augmentation_removes_every_random_stage() -> None:
    aug = {"gain_p": 1.0, "noise_p": 1.0, "mixup_p": 1.0}
    model = build_model(small_config("cnn", augment=aug, dropout=0.0), 3, SR, SR)
    wave, labels = synthetic_clips(2, 1.0)
    targets = F.one_hot(labels, 3).float()
    model.strip_augmentation().train()
    model.backbone.eval()  # BatchNorm batch statistics aside, training mode is now deterministic
    assert torch.equal(model.features(wave), model.frontend(wave))
    _, same = model(wave, targets)
    assert torch.equal(same, targets)


def test_probabilities_are_eval_mode_softmax_and_keep_the_mode() -> None:
    model = build_model(small_config("rnn"), 4, SR, SR)
    wave, _ = synthetic_clips(2, 1.0)
    model.train()
    probs = model.probabilities(wave)
    assert model.training
    assert probs.shape == (4, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(model(wave), -1))


def test_bad_waveform_input_is_a_clear_error() -> None:
    model = build_model(small_config("cnn"), 2, SR, SR).eval()
    with pytest.raises(ValueError, match=r"expected waveforms \[B, T\]"):
        model(torch.zeros(2, 1, SR))
    with pytest.raises(TypeError, match="int16 or floating point"):
        model(torch.zeros(2, SR, dtype=torch.int32))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model(small_config("cnn"), 1, SR, SR)


def test_channels_last_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    a = build_model(small_config("resnet"), 3, SR, SR).eval()
    cfg = small_config("resnet")
    cfg.channels_last = True
    b = build_model(cfg, 3, SR, SR).eval()
    b.load_state_dict(a.state_dict())
    wave, _ = synthetic_clips(1, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(a(wave), b(wave), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "rnn", "crnn", "resnet"])
def test_example_config_files_build_models(name: str) -> None:
    data = load_yaml(REPO / "configs" / f"{name}.yaml")
    cfg = from_dict(ModelConfig, data["model"])
    assert cfg.arch == name
    model = build_model(cfg, 10, SR, SEGMENT).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, SEGMENT, dtype=torch.int16)).shape == (1, 10)
    if name == "rnn":
        assert model.in_shape == (1, 3 * 20 + 12, 130)  # MFCC + 2 deltas + chroma along frequency
    else:
        assert model.in_shape == (1, 128, 130)


@pytest.mark.parametrize(
    ("arch", "params"),
    [
        ("rnn", {"cell": "lstm", "pool": "last", "bidirectional": False, "layers": 1}),
        ("rnn", {"cell": "gru", "pool": "mean"}),
        ("crnn", {"pool": "last"}),
        ("cnn", {"pool": "avgmax"}),
        ("cnn1d", {"pool": "attention"}),
    ],
)
def test_pooling_variants_give_logits_that_depend_on_every_frame_window(arch: str, params: dict) -> None:
    torch.manual_seed(0)
    model = build_model(small_config(arch, **params), 4, SR, SR).eval()
    wave = torch.randn(2, SR) * 0.1
    changed = wave.clone()
    changed[:, : SR // 4] = 0.0  # silence the first quarter: "last" pooling must still see it
    with torch.no_grad():
        a, b = model(wave), model(changed)
    assert a.shape == (2, 4)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("arch", ["cnn", "crnn", "resnet"])
def test_2d_archs_accept_narrow_and_multichannel_feature_stacks(arch: str) -> None:
    # chroma alone has 12 bins: frequency pooling stops at 1 bin instead of failing
    narrow = from_dict(ModelConfig, {**SMALL[arch], "features": {"features": ["chroma"]}, "augment": NO_AUG})
    # log-mel and MFCC as two channels of 32 bins each
    stacked = from_dict(
        ModelConfig,
        {
            **SMALL[arch],
            "features": {"features": ["logmel", "mfcc"], "n_mels": 32, "n_mfcc": 32, "stack": "channels"},
            "augment": NO_AUG,
        },
    )
    for cfg, in_shape in ((narrow, (1, 12, 44)), (stacked, (2, 32, 44))):
        model = build_model(cfg, 3, SR, SR).eval()
        assert model.in_shape == in_shape
        with torch.no_grad():
            assert model(torch.randn(2, SR) * 0.1).shape == (2, 3)
