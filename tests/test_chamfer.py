"""Chamfer distance: hand-made sets, brute force, chunking, permutation invariance, gradcheck."""

import shutil

import pytest
import torch

from vaekit import nearest
from vaekit.divergences import chamfer_distance
from vaekit.nearest import nearest_indices, nearest_squared_distances, offset_distance_minima

HAS_COMPILER = any(shutil.which(name) for name in ("g++", "clang++", "c++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="the fused kernels need a C++ compiler")
BACKENDS = [pytest.param("fused", marks=needs_compiler), "matmul"]


def _brute_force(x, y):
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)  # (B, N, M)
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def test_hand_made_sets():
    x = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    y = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [1, 0, 1]]])
    # x->y: 0 and 1 (to (1,0,1)), mean 0.5; y->x: 0, 4, 1, mean 5/3
    assert chamfer_distance(x, y).item() == pytest.approx(0.5 + 5.0 / 3.0)
    assert chamfer_distance(x, x).item() == 0.0


@pytest.mark.parametrize("max_bytes", [64, 4096, 256 * 2**20])
def test_matches_brute_force_for_any_chunk_size(max_bytes):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 50, 3, generator=g), torch.randn(3, 37, 3, generator=g)
    chamfer = chamfer_distance(x, y, reduction="none", backend="matmul", max_bytes=max_bytes)
    torch.testing.assert_close(chamfer, _brute_force(x, y))


@needs_compiler
@pytest.mark.parametrize("dims", [2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernels_find_the_brute_force_neighbours(dims, dtype):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 70, dims, generator=g, dtype=dtype), torch.randn(3, 45, dims, generator=g, dtype=dtype)
    squared = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    assert torch.equal(nearest_indices(x, y, backend="fused"), squared.argmin(2))
    to_y, to_x = nearest_squared_distances(x, y, backend="fused")
    torch.testing.assert_close(to_y, squared.amin(2))
    torch.testing.assert_close(to_x, squared.amin(1))
    torch.testing.assert_close(chamfer_distance(x, y, reduction="none", backend="fused"), _brute_force(x, y))


@needs_compiler
def test_fused_indices_repair_a_row_the_index_kernel_missed(monkeypatch):
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(2, 30, 3, generator=g), torch.randn(2, 20, 3, generator=g)
    expected = nearest_indices(x, y, backend="matmul")
    first_index = nearest._kernel("first_index")

    def missing_some(*args):
        found = first_index(*args).clone()
        found[1, ::3] = y.shape[1]  # "no distance equals the minimum": as if two kernels rounded differently
        return found

    monkeypatch.setitem(nearest._compiled, "first_index", missing_some)
    assert torch.equal(nearest_indices(x, y, backend="fused"), expected)


def test_auto_falls_back_to_matmul_with_one_warning(monkeypatch):
    def no_compiler(name):
        raise RuntimeError("InductorError: no C++ compiler found")

    monkeypatch.setattr(nearest, "_kernel", no_compiler)
    monkeypatch.setattr(nearest, "_fused_failure", None)
    monkeypatch.delenv("VAEKIT_NEAREST", raising=False)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 30, 3, generator=g), torch.randn(2, 20, 3, generator=g)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        chamfer = chamfer_distance(x, y, reduction="none")
    assert nearest.resolve_backend() == "matmul"
    torch.testing.assert_close(chamfer, _brute_force(x, y))
    with pytest.raises(RuntimeError, match="no C"):  # asked for by name: the failure is not hidden
        nearest_indices(x, y, backend="fused")
    monkeypatch.setenv("VAEKIT_NEAREST", "fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        nearest_indices(x, y)


def test_permutation_invariant_and_symmetric():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 40, 3, generator=g), torch.randn(2, 30, 3, generator=g)
    permuted = x[:, torch.randperm(40, generator=g)]
    torch.testing.assert_close(chamfer_distance(permuted, y, reduction="none"), chamfer_distance(x, y, reduction="none"))
    torch.testing.assert_close(chamfer_distance(y, x, reduction="none"), chamfer_distance(x, y, reduction="none"))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b, reduction="sum"), (x, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_matches_brute_force_autograd(backend):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 3, generator=g, requires_grad=True)
    y = torch.randn(2, 48, 3, generator=g, requires_grad=True)
    chamfer_distance(x, y, backend=backend).backward()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    _brute_force(x2, y2).mean().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(y.grad, y2.grad)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"Expected x of shape \(N, P, D\)"):
        chamfer_distance(torch.zeros(5, 3), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), reduction="max")


@pytest.mark.parametrize("max_bytes", [64, 4096, 2 * 2**20])
def test_values_only_path_matches_brute_force(max_bytes):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(3, 50, 3, generator=g, dtype=torch.float64), torch.randn(3, 37, 3, generator=g, dtype=torch.float64)
    squared = torch.cdist(x, y).pow(2)
    to_y, to_x = nearest_squared_distances(x, y, backend="matmul", max_bytes=max_bytes)
    torch.testing.assert_close(to_y, squared.amin(2))
    torch.testing.assert_close(to_x, squared.amin(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_offset_distance_minima_is_the_c_transform(backend):
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(2, 40, 3, generator=g, dtype=torch.float64), torch.randn(2, 25, 3, generator=g, dtype=torch.float64)
    offset = torch.randn(2, 25, generator=g, dtype=torch.float64)
    expected = (torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") - offset[:, None, :]).amin(2)
    torch.testing.assert_close(offset_distance_minima(x, y, offset, backend=backend, max_bytes=2048), expected)

