"""engine.plots: each figure is a real, non-blank PNG; bad input fails clearly."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from engine.plots import comparison_chart_png, confusion_matrix_png, training_curves_png


def _png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].std()) > 0.05  # not blank
    return img


def test_confusion_matrix_png_two_panels_wider_than_tall(tmp_path):
    cm = [[5, 1, 0], [0, 0, 0], [2, 1, 7]]  # a class with no support must not divide by zero
    out = confusion_matrix_png(cm, ["blues", "jazz", "rock"], tmp_path / "sub" / "cm.png")
    img = _png(out)
    assert img.shape[1] > 1.5 * img.shape[0]  # two side-by-side panels


def test_confusion_matrix_png_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="does not match 3 labels"):
        confusion_matrix_png([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")


def test_training_curves_png_skips_missing_and_nan_values(tmp_path):
    history = [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "valid_loss": 2.1 / (e + 1), "train_acc": 0.1 * e,
         "valid_acc": 0.09 * e, "valid_track_acc": 0.1 * e, "lr": 1e-3 * 0.5**e}
        for e in range(6)
    ]  # fmt: skip
    history[2]["valid_loss"] = math.nan
    del history[3]["valid_track_acc"]
    _png(training_curves_png(history, tmp_path / "curves.png"))
    # without lr the figure has two panels instead of three: narrower
    wide = mpimg.imread(tmp_path / "curves.png").shape[1]
    no_lr = [{k: v for k, v in row.items() if k != "lr"} for row in history]
    assert mpimg.imread(training_curves_png(no_lr, tmp_path / "c2.png")).shape[1] < wide


def test_comparison_chart_png_accepts_nested_and_flat_rows(tmp_path):
    rows = [
        {
            "model": "cnn",
            "segment": {"accuracy": 0.7, "macro_f1": 0.6},
            "track": {"accuracy": 0.8, "macro_f1": 0.7},
        },
        {"model": "crnn", "segment_accuracy": 0.65, "track_accuracy": 0.75, "track_macro_recall": 0.7},
    ]
    _png(comparison_chart_png(rows, tmp_path / "cmp.png"))


def test_comparison_chart_png_without_metrics_raises(tmp_path):
    with pytest.raises(ValueError, match="no comparison metrics"):
        comparison_chart_png([{"model": "x", "loss": 1.0}], tmp_path / "cmp.png")
    with pytest.raises(ValueError, match="at least one"):
        comparison_chart_png([], tmp_path / "cmp.png")
