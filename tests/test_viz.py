"""Image grids: tile placement, padding and the PNG written to disk."""

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.viz import image_grid, save_image_grid


def test_image_grid_places_each_image_in_its_cell_with_white_padding():
    images = torch.stack([torch.full((1, 2, 3), value) for value in (0.0, 0.5, 1.0)])  # (3, 1, 2, 3)
    grid = image_grid(images, nrow=2)  # 2 columns -> 2 rows, the last cell empty
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
    assert (grid[1:3, 1:4] == 0).all()  # image 0: row 0, col 0
    assert (grid[1:3, 5:8] == 128).all()  # image 1: row 0, col 1 (0.5 * 255 rounded)
    assert (grid[4:6, 1:4] == 255).all()  # image 2: row 1, col 0
    padding = np.ones(grid.shape[:2], dtype=bool)
    padding[1:3, 1:4] = padding[1:3, 5:8] = padding[4:6, 1:4] = False
    assert (grid[padding] == 255).all()  # padding and the empty cell are white


def test_image_grid_clamps_to_the_unit_interval_and_rejects_wrong_shapes():
    grid = image_grid(torch.tensor([[[[-1.0, 2.0]]]]), nrow=1)  # (1, 1, 1, 2)
    assert grid[1, 1:3, 0].tolist() == [0, 255]
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\), got \(2, 8, 8\)"):
        image_grid(torch.zeros(2, 8, 8), nrow=2)


def test_saved_grid_is_the_grid_enlarged_by_nearest_neighbour(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=generator)
    path = save_image_grid(images, tmp_path / "grid.png", nrow=4, min_tile=24)  # 8 px tiles -> x3
    picture = np.asarray(Image.open(path))
    expected = image_grid(images, nrow=4).repeat(3, axis=0).repeat(3, axis=1)
    assert picture.shape == expected.shape == (2 * 9 * 3 + 3, 4 * 9 * 3 + 3, 3)
    np.testing.assert_array_equal(picture, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # the atomic write left no temporary file


def test_the_codec_comparison_plot_draws_each_codec_on_a_log_byte_axis(tmp_path):
    from vaekit.viz import save_codec_comparison_plot

    path = save_codec_comparison_plot({"ours": [(40.0, 27.0), (90.0, 31.0)], "WebP": [(160.0, 27.5), (230.0, 34.0)]},
                                      tmp_path / "rd.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (550, 400)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels[(pixels.max(1) - pixels.min(1)) > 100]}  # saturated: the two lines
    assert len(colours) > 2


def test_the_kl_per_group_plot_needs_the_same_groups_in_every_run(tmp_path):
    from vaekit.viz import save_kl_per_group_plot

    path = save_kl_per_group_plot({"a": [4.0, 1.5, 1.6], "b": [3.2, 1.9, 1.8]}, tmp_path / "kl.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (560, 360)
    with pytest.raises(ValueError, match="same number of latent groups"):
        save_kl_per_group_plot({"a": [1.0, 2.0], "b": [1.0]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="group labels"):
        save_kl_per_group_plot({"a": [1.0, 2.0]}, tmp_path / "bad.png", group_labels=["only one"])


def test_the_lossless_rate_plot_colours_the_models_and_refuses_a_bound_without_a_rate(tmp_path):
    from vaekit.viz import save_lossless_rate_plot

    rates = {"vaekit VAE": 40.0, "PNG": 110.0, "xz": 60.0}
    path = save_lossless_rate_plot(rates, tmp_path / "lossless.png", negative_elbo={"vaekit VAE": 39.5})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 255)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    orange = (np.abs(pixels - [255, 127, 14]).sum(-1) < 30).sum()  # matplotlib's tab:orange, the model's bar
    grey = (np.abs(pixels - [127, 127, 127]).sum(-1) < 30).sum()  # tab:gray, the two classical codecs' bars
    assert orange > 500 and grey > 2 * orange
    with pytest.raises(ValueError, match="without a rate"):
        save_lossless_rate_plot(rates, tmp_path / "bad.png", negative_elbo={"WebP": 30.0})
