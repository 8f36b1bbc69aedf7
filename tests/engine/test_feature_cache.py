"""engine.feature_cache: cached front-end features equal the uncached path, each clip is computed once,
files on disk are reused, and a model whose front end is not a fixed function of the clip is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import from_dict
from engine.feature_cache import ClipKey, FeatureCache, NotCacheableError, uncacheable_reason
from engine.models import ModelConfig, build_model
from tests.conftest import music_like

SR = 8000
SEGMENT = SR  # 1-s crops
NO_AUGMENT = {
    "gain_p": 0.0, "noise_p": 0.0, "shift_p": 0.0, "polarity_p": 0.0, "freq_masks": 0, "time_masks": 0,
    "time_stretch_p": 0.0, "pitch_shift_p": 0.0, "mixup_p": 0.0,
}  # fmt: skip


def _model(features: dict | None = None, augment: dict | None = None):
    cfg = from_dict(
        ModelConfig,
        {
            "arch": "stats",
            "params": {"stats": ["mean", "std"]},
            "features": {"features": ["mfcc", "chroma"], "n_fft": 512, "hop_length": 256, "n_mels": 32,
                         "n_mfcc": 13, "deltas": 1, **(features or {})},  # fmt: skip
            "augment": NO_AUGMENT if augment is None else augment,
        },
    )
    torch.manual_seed(0)
    return build_model(cfg, 3, SR, SEGMENT)


def _waves(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.stack([music_like(1.0, SR, seed=seed + i)[:, 0] for i in range(n)]))


def _keys(n: int, start: int = 0) -> list[ClipKey]:
    return [ClipKey(f"track{i}", start, SEGMENT) for i in range(n)]


def test_cached_features_equal_the_uncached_path():
    model = _model().train()
    wave = _waves(4)
    cache = FeatureCache(model)
    got = cache.features(_keys(4), wave)
    want = model.features(wave)  # training mode: augmentation off, so the same values
    assert got.shape == want.shape == (4, 1, 2 * 13 + 12, 1 + SEGMENT // 256)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    again = cache.features(_keys(4)[::-1], wave.flip(0))  # served from memory, in the asked order
    torch.testing.assert_close(again, want.flip(0), rtol=0, atol=0)


def test_each_clip_is_computed_once_and_only_missing_audio_is_loaded():
    model = _model()
    wave = _waves(6)
    cache = FeatureCache(model)
    asked: list[list[int]] = []

    def load(rows: list[int]) -> torch.Tensor:
        asked.append(rows)
        return wave[rows]

    keys = _keys(6)
    cache.features(keys[:4], load)
    cache.features([keys[2], keys[5], keys[0], keys[4]], lambda rows: load([[2, 5, 0, 4][r] for r in rows]))
    assert asked == [[0, 1, 2, 3], [5, 4]]  # the second batch decodes only keys 5 and 4
    assert cache.counts() == {"computed": 6, "memory_hits": 2, "disk_hits": 0, "stored": 6}
    other_crop = ClipKey("track0", SEGMENT, SEGMENT)  # the same track at another position is another clip
    cache.features([other_crop], wave[:1])
    assert cache.computed == 7


def test_files_on_disk_are_reused_by_a_new_cache(tmp_path):
    model = _model()
    wave = _waves(3)
    first = FeatureCache(model, tmp_path)
    want = first.features(_keys(3), wave)
    second = FeatureCache(model, tmp_path)
    got = second.features(_keys(3), lambda rows: pytest.fail("nothing should be computed"))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert second.counts() == {"computed": 0, "memory_hits": 0, "disk_hits": 3, "stored": 3}
    changed = FeatureCache(_model({"n_mfcc": 12}), tmp_path)  # another front end: its own folder
    assert changed.fingerprint != first.fingerprint and ClipKey("track0", 0, SEGMENT) not in changed


@pytest.mark.parametrize(
    "features,augment,reason",
    [
        ({}, {}, "wave_aug is active"),  # the default recipe augments
        ({}, {**NO_AUGMENT, "freq_masks": 2}, "spec_aug is active in training (freq_mask)"),
        ({"trainable": True}, None, "trainable parameters"),
        ({"norm": "batchnorm"}, None, "batch statistics"),
    ],
)
def test_a_front_end_that_is_not_fixed_is_refused_with_the_reason(features, augment, reason):
    model = _model(features, augment)
    assert reason in (uncacheable_reason(model) or "")
    with pytest.raises(NotCacheableError, match=reason.split(" (")[0]):
        FeatureCache(model)


def test_frozen_front_end_without_augmentation_is_cacheable():
    model = _model({"trainable": True}, {})
    model.frontend.requires_grad_(False)
    model.strip_augmentation()
    assert uncacheable_reason(model) is None


def test_backbone_on_cached_features_equals_forward_with_mixup():
    model = _model(augment={**NO_AUGMENT, "mixup_p": 1.0})  # mixup acts after the front end: still cacheable
    wave = _waves(4)
    targets = torch.eye(3)[[0, 1, 2, 0]]
    cache = FeatureCache(model)
    feats = cache.features(_keys(4), wave)
    model.eval()
    torch.testing.assert_close(model.head(feats), model(wave), rtol=0, atol=0)
    model.train()
    model.reseed_augmentation(7)
    want_logits, want_targets = model(wave, targets)
    model.reseed_augmentation(7)
    got_logits, got_targets = model.head(feats, targets)
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=0)
    torch.testing.assert_close(got_targets, want_targets, rtol=0, atol=0)
