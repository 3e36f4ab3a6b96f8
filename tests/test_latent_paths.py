"""Known answers for the latent paths behind the interpolation and traversal pictures."""

import math

import torch

from vaekit.latent_paths import slerp, traversal


def test_slerp_of_orthogonal_unit_vectors_is_the_rotation_between_them():
    start, end = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    t = torch.linspace(0, 1, 5)
    path = slerp(start, end, t)  # (1, 5, 3)
    angle = t * math.pi / 2
    expected = torch.stack([torch.cos(angle), torch.sin(angle), torch.zeros(5)], dim=-1)
    torch.testing.assert_close(path[0], expected)


def test_slerp_keeps_the_norm_and_steps_by_equal_angles():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, 8, generator=generator)
    end = torch.randn(4, 8, generator=generator)
    end = end / end.norm(dim=-1, keepdim=True) * start.norm(dim=-1, keepdim=True)  # same norms
    path = slerp(start, end, torch.linspace(0, 1, 7))  # (4, 7, 8)
    torch.testing.assert_close(path[:, 0], start)
    torch.testing.assert_close(path[:, -1], end)
    torch.testing.assert_close(path.norm(dim=-1), start.norm(dim=-1, keepdim=True).expand(4, 7))
    step_cos = torch.nn.functional.cosine_similarity(path[:, 1:], path[:, :-1], dim=-1)  # (4, 6)
    torch.testing.assert_close(step_cos, step_cos[:, :1].expand(4, 6))
    total = torch.arccos(torch.nn.functional.cosine_similarity(start, end, dim=-1))
    torch.testing.assert_close(torch.arccos(step_cos[:, 0]), total / 6, atol=1e-4, rtol=1e-4)


def test_slerp_of_parallel_or_opposite_vectors_falls_back_to_a_finite_line():
    start = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    end = torch.tensor([[2.0, 4.0], [-1.0, -2.0]])  # parallel, antiparallel
    t = torch.tensor([0.0, 0.25, 1.0])
    path = slerp(start, end, t)
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path, (1 - t.view(1, -1, 1)) * start.unsqueeze(1) + t.view(1, -1, 1) * end.unsqueeze(1))


def test_traversal_moves_exactly_one_dimension_per_row():
    center = torch.tensor([0.5, -1.0, 2.0, 0.0])
    values = torch.linspace(-3, 3, 5)
    grid = traversal(center, [2, 0], values)  # (2, 5, 4)
    assert grid.shape == (2, 5, 4)
    torch.testing.assert_close(grid[0, :, 2], values)
    torch.testing.assert_close(grid[1, :, 0], values)
    untouched = torch.ones(2, 4, dtype=torch.bool)
    untouched[0, 2] = untouched[1, 0] = False
    for row in range(2):
        torch.testing.assert_close(grid[row][:, untouched[row]], center[untouched[row]].expand(5, -1))
    assert center.tolist() == [0.5, -1.0, 2.0, 0.0]  # the center is not modified in place
