"""Precomputed feature-sequence front end (MSD): layout, normalisation, statistics, time-only augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models import ModelConfig, build_model
from kernels.augment_config import AugmentConfig
from kernels.features import FrontendConfig, build_frontend
from kernels.precomputed import PrecomputedFrontend, estimate_sequence_stats, sequence_augment_config


def test_frontend_transposes_and_normalises_each_dimension():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(5, 3, (2, 7, 3)).astype(np.float16))
    mean, std = [1.0, -2.0, 0.5], [2.0, 4.0, 0.25]
    fe = PrecomputedFrontend(
        FrontendConfig(features=["precomputed"], norm="stats", norm_mean=mean, norm_std=std)
    )
    y = fe(x)
    assert y.shape == (2, 1, 3, 7) and y.dtype == torch.float32 and fe.out_shape(11) == (1, 3, 11)
    want = (x.float() - torch.tensor(mean)) / torch.tensor(std)  # (B, frames, D)
    torch.testing.assert_close(y[:, 0], want.transpose(1, 2), rtol=0, atol=0)
    raw = PrecomputedFrontend(FrontendConfig(features=["precomputed"], feature_dim=3))(x)
    torch.testing.assert_close(raw[:, 0], x.float().transpose(1, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected \[B, frames, D=3\]"):
        fe(torch.zeros(2, 7, 4))
    with pytest.raises(ValueError, match="feature dimension is unknown"):
        PrecomputedFrontend(FrontendConfig(features=["precomputed"]))


def test_precomputed_cannot_be_mixed_with_waveform_features():
    with pytest.raises(ValueError, match="cannot be mixed with waveform features"):
        build_frontend(FrontendConfig(features=["logmel", "precomputed"]), 22050)


def test_sequence_stats_equal_numpy_over_all_frames():
    rng = np.random.default_rng(1)
    batches = [torch.from_numpy(rng.normal(i, 1 + i, (3, 5 + i, 4))) for i in range(3)]
    mean, std = estimate_sequence_stats(batches)
    frames = np.concatenate([b.numpy().reshape(-1, 4) for b in batches])
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, frames.std(0), rtol=1e-10)


def test_feature_models_mask_whole_frames_only_and_only_in_training():
    aug = AugmentConfig(time_masks=2, time_mask_width=6, mask_value="zero", mixup_p=0.0, seed=3)
    assert sequence_augment_config(aug).pitch_shift_p == 0 and sequence_augment_config(aug).freq_masks == 0
    cfg = ModelConfig(
        arch="cnn1d",
        params={"channels": [4], "hidden": 4},
        features=FrontendConfig(
            features=["precomputed"], norm="stats", norm_mean=[0.0] * 5, norm_std=[1.0] * 5
        ),
        augment=aug,
    )
    model = build_model(cfg, num_classes=3, sample_rate=4, segment_samples=40)
    assert model.input_kind == "features" and model.in_shape == (1, 5, 40)
    x = torch.rand(8, 40, 5) + 1.0  # never 0: zeros are masks
    model.train()
    y = model.features(x)[:, 0]  # (B, D, frames)
    zero_cols = (y == 0).all(dim=1)  # (B, frames): whole frames masked
    assert zero_cols.any() and ((y == 0).any(dim=1) == zero_cols).all()  # no partly masked frame
    assert zero_cols.sum(1).max() <= 12
    model.eval()
    torch.testing.assert_close(model.features(x)[:, 0], x.transpose(1, 2), rtol=0, atol=0)
