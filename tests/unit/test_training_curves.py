"""The training-curves PNG, drawn from metric histories as MLflow returns them."""

from __future__ import annotations

import matplotlib.image

from pipeline.train.curves import draw_curves


def test_curves_draw_every_panel_and_say_what_was_not_logged(tmp_path):
    steps = range(0, 400, 20)
    histories = {
        "train_loss": [(s, 2.3 * 0.995**s) for s in steps],  # per logged step
        "val_top1_error": [(100, 0.8), (200, 0.6), (300, 0.5)],  # per epoch
        "val_top5_error": [(100, 0.4), (200, 0.2), (300, 0.1)],
        # no lr: its panel says so instead of failing
    }
    path = tmp_path / "curves.png"
    draw_curves(histories, path, title="smoke (VGG A)")
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 2 * height > 300
