"""engine.plots: each figure is a real, non-blank PNG showing the values it is given; bad input fails clearly."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from engine.plots import comparison_chart, comparison_chart_png, confusion_matrix_png, training_curves_png


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


def _bars(fig) -> dict[str, dict[str, float]]:
    """What the comparison chart shows: ``{model: {group tick label: bar height (%)}}``, read back from the
    figure's bar containers (one per model) and x tick labels (one per metric group)."""
    (ax,) = fig.axes
    groups = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    out = {}
    for bars in ax.containers:
        shown = {}
        for patch in bars.patches:
            g = round(patch.get_x() + patch.get_width() / 2)  # bar centre -> its group (offsets < 0.5)
            shown[groups[g]] = patch.get_height()
        out[bars.get_label()] = shown
    return out


# the same two models' metrics as an evaluation's metrics.json (nested) and as a flat table row
NESTED = [
    {
        "model": "cnn",
        "segment": {"accuracy": 0.7, "macro_f1": 0.6},
        "track": {"accuracy": 0.8, "macro_f1": 0.7},
    },
    {"model": "crnn", "segment": {"accuracy": 0.65}, "track": {"accuracy": 0.75, "macro_recall": 0.7}},
]
FLAT = [
    {
        "model": "cnn",
        "segment_accuracy": 0.7,
        "segment_macro_f1": 0.6,
        "track_accuracy": 0.8,
        "track_macro_f1": 0.7,
    },
    {"model": "crnn", "segment_accuracy": 0.65, "track_accuracy": 0.75, "track_macro_recall": 0.7},
]
EXPECTED = {  # % per (model, metric group); a metric a model lacks has no bar
    "cnn": {"accuracy (segment)": 70.0, "accuracy (track)": 80.0, "macro F1 (segment)": 60.0, "macro F1 (track)": 70.0},
    "crnn": {"accuracy (segment)": 65.0, "accuracy (track)": 75.0, "macro recall (track)": 70.0},
}  # fmt: skip


def test_comparison_chart_draws_each_row_value_as_a_bar_of_its_metric_nested_or_flat():
    for rows in (NESTED, FLAT):
        fig = comparison_chart(rows)
        # groups in the fixed metric order, only those some model has
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
            "accuracy\n(segment)", "accuracy\n(track)", "macro recall\n(track)", "macro F1\n(segment)",
            "macro F1\n(track)",
        ]  # fmt: skip
        bars = _bars(fig)
        assert bars.keys() == EXPECTED.keys()
        for model, shown in EXPECTED.items():
            assert bars[model] == pytest.approx(shown)
        # the value printed above each bar is its height
        labels = [t.get_text() for t in fig.axes[0].texts]
        assert sorted(labels) == sorted(f"{v:.1f}" for shown in EXPECTED.values() for v in shown.values())
    # a row may mix both spellings; where it has both, the nested value (metrics.json) is the one drawn
    mixed = [
        {"name": "m", "segment": {"accuracy": 0.5}, "segment_accuracy": 0.9, "track_macro_precision": 0.25}
    ]
    assert _bars(comparison_chart(mixed)) == {
        "m": {"accuracy (segment)": 50.0, "macro precision (track)": 25.0}
    }


def test_comparison_chart_png_is_the_same_image_for_nested_and_flat_rows(tmp_path):
    nested = _png(comparison_chart_png(NESTED, tmp_path / "nested.png"))
    flat = _png(comparison_chart_png(FLAT, tmp_path / "flat.png"))
    assert nested.shape == flat.shape and np.array_equal(nested, flat)
    # and a different value is a different image (the comparison above is not vacuous)
    changed = [dict(FLAT[0], track_accuracy=0.4), FLAT[1]]
    assert not np.array_equal(mpimg.imread(comparison_chart_png(changed, tmp_path / "other.png")), flat)


def test_comparison_chart_png_without_metrics_raises(tmp_path):
    with pytest.raises(ValueError, match="no comparison metrics"):
        comparison_chart_png([{"model": "x", "loss": 1.0}], tmp_path / "cmp.png")
    with pytest.raises(ValueError, match="at least one"):
        comparison_chart_png([], tmp_path / "cmp.png")
