"""The utilisation heatmap's matrix (a pure function of the trainer's history) and the pictures drawn."""

import math

import numpy as np
import pytest

from harmonica.training.figures import spectrogram_image, util_entry, util_heatmap_image, util_matrix


def _history() -> list[dict]:
    return [
        util_entry(4, {"val/cb1/util_pred": 0.50, "val/cb2/util_pred": 0.05, "val/loss": 3.0,
                       "val_ema/cb1/util_pred": 0.9, "nar/cb1/util_pred": 0.7}),
        util_entry(8, {"val/cb1/util_pred": 0.08, "val/cb2/util_pred": 0.40, "val/cb3/util_pred": float("nan")}),
        util_entry(12, {"val/cb1/util_pred": 0.60, "val/cb3/util_pred": 0.10}),
    ]


def test_util_entry_keeps_the_validation_utilisation_of_each_codebook():
    e = util_entry(8, {"val/cb1/util_pred": 0.5, "val/cb10/util_pred": 0.25, "val_ema/cb1/util_pred": 0.9,
                       "val/cb2/util_target": 1.0, "val/cb3/util_pred": math.inf, "val/util_pred_median": 0.4})
    assert e == {"step": 8, "util": {"cb1": 0.5, "cb10": 0.25}}


def test_util_matrix_is_codebooks_by_validation_steps_with_the_floor_marked():
    m = util_matrix(_history(), floor=0.1)
    assert m.codebooks == (1, 2, 3) and m.steps == (4, 8, 12) and m.floor == 0.1
    assert m.values.shape == m.below.shape == (3, 3)
    np.testing.assert_allclose(m.values[0], [0.50, 0.08, 0.60])
    assert math.isnan(m.values[2, 0]) and math.isnan(m.values[2, 1]) and math.isnan(m.values[1, 2])
    # under the floor: cb2 at step 4 and cb1 at step 8; exactly at the floor (cb3 @ 12) and NaN are not
    assert m.below.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_util_matrix_orders_steps_and_codebooks_and_keeps_a_repeated_steps_last_record():
    history = [util_entry(8, {"val/cb10/util_pred": 0.3}), util_entry(4, {"val/cb2/util_pred": 0.2}),
               util_entry(8, {"val/cb10/util_pred": 0.9})]  # step 8 again: a resumed run
    m = util_matrix(history, floor=0.5)
    assert m.codebooks == (2, 10) and m.steps == (4, 8)
    assert m.values[1, 1] == 0.9 and m.below.tolist() == [[True, False], [False, False]]
    assert util_matrix([], 0.1).values.shape == (0, 0)


def _red(image: np.ndarray) -> int:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 80) & (b < 80)).sum())


def test_the_heatmap_hatches_the_cells_under_the_floor():
    history = _history()
    none_below, all_below = util_matrix(history, floor=0.0), util_matrix(history, floor=0.99)
    a, b = util_heatmap_image(none_below, "nar"), util_heatmap_image(all_below, "nar")
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 4 and a.shape == b.shape
    assert not none_below.below.any() and all_below.below.sum() == 6  # every measured cell
    assert _red(b) > _red(a) + 500  # outlined, hatched cells (the colour bar's floor line is in both)


@pytest.mark.parametrize("n", [100, 16000])
def test_spectrogram_image_is_an_rgba_array(n):
    image = spectrogram_image(np.sin(np.arange(n) / 5.0).astype(np.float32), 16000, "ar step 8: u1")
    assert image.dtype == np.uint8 and image.shape == (260, 600, 4)
    assert image[..., :3].std() > 10  # something was drawn
