"""Known answers for the probability math: closed forms, torch.distributions, SciPy, Monte Carlo,
normalisation, cdf / icdf round trips, binned masses and sampling temperature."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from vaekit.distributions import (
    Bernoulli,
    DiagonalGaussian,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    kl_divergence,
)
from vaekit.likelihoods import ImageLikelihood


def _gaussians(seed: int = 0, shape=(64, 5)):
    g = torch.Generator().manual_seed(seed)
    q = DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    p = DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return q, p


def test_kl_matches_torch_distributions():
    q, p = _gaussians()
    expected = torch_kl(Normal(q.mean, q.std), Normal(p.mean, p.std))
    torch.testing.assert_close(kl_divergence(q, p), expected, rtol=1e-5, atol=1e-6)


def test_kl_matches_monte_carlo_estimate():
    q, p = _gaussians(seed=1, shape=(4, 3))
    g = torch.Generator().manual_seed(2)
    z = q.rsample(torch.randn((200_000, 4, 3), generator=g))  # (S, 4, 3)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    closed_form = kl_divergence(q, p)
    standard_error = (q.log_prob(z) - p.log_prob(z)).std(0) / math.sqrt(z.shape[0])
    assert torch.all((monte_carlo - closed_form).abs() < 5 * standard_error + 1e-4)


def test_kl_of_identical_gaussians_is_zero_and_positive_otherwise():
    q, p = _gaussians()
    assert torch.allclose(kl_divergence(q, q), torch.zeros_like(q.mean), atol=1e-6)
    assert torch.all(kl_divergence(q, p) > 0)


def test_gaussian_log_prob_matches_torch():
    q, _ = _gaussians()
    x = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(q.log_prob(x), Normal(q.mean, q.std).log_prob(x), rtol=1e-5, atol=1e-5)


def test_rsample_is_reparameterised():
    mean = torch.zeros(3, requires_grad=True)
    log_var = torch.zeros(3, requires_grad=True)
    z = DiagonalGaussian(mean, log_var).rsample(torch.ones(3))
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(3))
    torch.testing.assert_close(log_var.grad, torch.full((3,), 0.5))


def test_bernoulli_log_prob_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, generator=g)
    x = (torch.rand(10, 7, generator=g) < 0.5).float()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(Bernoulli(logits).log_prob(x), expected)


@pytest.mark.parametrize("num_bins", [2, 17, 256])
@pytest.mark.parametrize("mean,log_scale", [(0.0, -4.0), (0.37, -1.0), (-0.99, 0.5), (1.0, -6.0), (3.0, 1.0)])
def test_discretized_logistic_sums_to_one_over_bins(num_bins, mean, log_scale):
    x = torch.arange(num_bins, dtype=torch.float64) / (num_bins - 1)
    dist = DiscretizedLogistic(torch.full_like(x, mean), torch.full_like(x, log_scale), num_bins)
    probabilities = dist.log_prob(x).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert torch.all(probabilities >= 0)


def test_discretized_logistic_mixture_sums_to_one_over_bins():
    num_bins, m = 256, 4
    g = torch.Generator().manual_seed(0)
    x = (torch.arange(num_bins, dtype=torch.float64) / (num_bins - 1)).view(num_bins, 1, 1, 1)  # (bins, C=1, 1, 1)
    params = torch.randn(1, m * 3, 1, 1, generator=g, dtype=torch.float64).expand(num_bins, -1, -1, -1)
    dist = ImageLikelihood("logistic_mixture", num_bins=num_bins, num_mixtures=m).distribution(params, channels=1)
    assert isinstance(dist, DiscretizedLogisticMixture)
    assert dist.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_logistic_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    log_scale = (torch.randn(6, generator=g, dtype=torch.float64) - 1).requires_grad_()
    x = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, s: DiscretizedLogistic(m, s, 6).log_prob(x), (mean, log_scale))


def test_learned_gaussian_std_is_bounded_below():
    spec = ImageLikelihood("gaussian", gaussian_std=None, gaussian_min_std=0.05)
    params = torch.full((1, 2, 2, 2), -1e4)  # a decoder pushing the variance to zero
    dist = spec.distribution(params, channels=1)
    assert torch.all(dist.std >= 0.05 - 1e-7)
    assert torch.isfinite(spec.log_likelihood(dist, torch.zeros(1, 1, 2, 2))).all()


def test_half_precision_inputs_are_computed_in_fp32():
    q = DiagonalGaussian(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16))
    assert kl_divergence(q, q).dtype == torch.float32
    assert Bernoulli(torch.zeros(3, dtype=torch.bfloat16)).log_prob(torch.ones(3)).dtype == torch.float32


# ---- cdf, icdf, binned mass ------------------------------------------------------------------

F64 = torch.float64


def _gaussian_f64(seed: int = 0, shape=(3, 50)) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(
        torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    )


def test_gaussian_cdf_and_icdf_match_scipy_norm():
    q = _gaussian_f64()
    g = torch.Generator().manual_seed(1)
    x = q.mean + 3 * torch.randn(q.mean.shape, generator=g, dtype=F64)
    u = torch.rand(q.mean.shape, generator=g, dtype=F64)
    mean, std = q.mean.numpy(), q.std.numpy()
    np.testing.assert_allclose(
        q.cdf(x).numpy(), stats.norm.cdf(x.numpy(), mean, std), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        q.icdf(u).numpy(), stats.norm.ppf(u.numpy(), mean, std), rtol=1e-10, atol=1e-12
    )


def test_gaussian_icdf_inverts_cdf():
    q = _gaussian_f64(seed=2)
    x = q.mean + 4 * q.std * torch.linspace(-1, 1, q.mean.shape[-1], dtype=F64)  # within 4 std
    torch.testing.assert_close(q.icdf(q.cdf(x)), x, rtol=0, atol=1e-9)


def test_gaussian_bins_partitioning_the_line_sum_to_one():
    q = DiagonalGaussian(torch.tensor([0.3], dtype=F64), torch.tensor([0.5], dtype=F64))
    edges = torch.cat(
        [torch.tensor([-math.inf]), torch.linspace(-4, 5, 40), torch.tensor([math.inf])]
    )
    masses = q.log_prob_bin(edges[:-1].to(F64), edges[1:].to(F64)).exp()  # (41,)
    assert masses.sum().item() == pytest.approx(1.0, abs=1e-12)
    expected = np.diff(stats.norm.cdf(edges.numpy(), 0.3, math.exp(0.25)))
    np.testing.assert_allclose(masses.numpy(), expected, rtol=1e-9, atol=1e-300)


def test_gaussian_bin_mass_is_accurate_deep_in_both_tails():
    # naive log(cdf(b) - cdf(a)) gives log(1 - 1) = -inf in the upper tail
    q = DiagonalGaussian.standard_like(torch.zeros(4, dtype=F64))
    lower = torch.tensor([-30.0, 20.0, 29.0, 8.0], dtype=F64)
    upper = torch.tensor([-29.0, 20.5, 30.0, math.inf], dtype=F64)
    expected = [
        np.log(stats.norm.cdf(-29.0) - stats.norm.cdf(-30.0)),
        np.log(stats.norm.sf(20.0) - stats.norm.sf(20.5)),
        np.log(stats.norm.sf(29.0) - stats.norm.sf(30.0)),
        stats.norm.logsf(8.0),
    ]
    np.testing.assert_allclose(q.log_prob_bin(lower, upper).numpy(), expected, rtol=1e-10)


def test_gaussian_bin_mass_gradients_are_exact_and_finite_with_infinite_edges():
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    log_var = (torch.randn(5, generator=g, dtype=F64) - 1).requires_grad_()
    lower = torch.tensor([-math.inf, -1.0, 0.0, 0.5, 2.0], dtype=F64)
    upper = torch.tensor([-1.0, 0.0, 0.5, 2.0, math.inf], dtype=F64)
    finite = slice(1, 4)
    assert torch.autograd.gradcheck(
        lambda m, v: DiagonalGaussian(m, v).log_prob_bin(lower[finite], upper[finite]),
        (mean[finite].detach().requires_grad_(), log_var[finite].detach().requires_grad_()),
    )
    DiagonalGaussian(mean, log_var).log_prob_bin(lower, upper).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_var.grad).all()


def _logistic_f64(seed: int = 0, shape=(3, 40)) -> DiscretizedLogistic:
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(shape, generator=g, dtype=F64) * 2 - 1
    log_scale = torch.rand(shape, generator=g, dtype=F64) * 3 - 4  # scale in [0.018, 0.37]
    return DiscretizedLogistic(mean, log_scale, num_bins=256)


def test_discretized_logistic_cdf_and_icdf_match_scipy_logistic():
    dist = _logistic_f64()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(dist.mean.shape, generator=g, dtype=F64)  # data units
    u = torch.rand(dist.mean.shape, generator=g, dtype=F64)
    loc, scale = dist.mean.numpy(), dist.log_scale.exp().numpy()
    np.testing.assert_allclose(
        dist.cdf(x).numpy(),
        stats.logistic.cdf(2 * x.numpy() - 1, loc, scale),
        rtol=1e-12,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        dist.icdf(u).numpy(),
        (stats.logistic.ppf(u.numpy(), loc, scale) + 1) / 2,
        rtol=1e-10,
        atol=1e-12,
    )


def test_discretized_logistic_icdf_inverts_cdf():
    dist = _logistic_f64(seed=2)
    scale = dist.log_scale.exp()
    # within 10 scales of the mean (in [-1, 1] units), where cdf(x) is still far from 0 and 1
    x = (dist.mean + 1) / 2 + 5 * scale * torch.linspace(-1, 1, dist.mean.shape[-1], dtype=F64)
    torch.testing.assert_close(dist.icdf(dist.cdf(x)), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("num_bins", [2, 17, 256])
@pytest.mark.parametrize(
    "mean,log_scale", [(0.0, -4.0), (0.37, -1.0), (-0.99, 0.5), (1.0, -6.0), (3.0, 1.0)]
)
def test_discretized_logistic_bin_mass_equals_log_prob_on_every_bin(num_bins, mean, log_scale):
    x = torch.arange(num_bins, dtype=F64) / (num_bins - 1)
    dist = DiscretizedLogistic(torch.full_like(x, mean), torch.full_like(x, log_scale), num_bins)
    lower, upper = dist.bin_edges(x)
    assert lower[0] == -math.inf and upper[-1] == math.inf
    torch.testing.assert_close(upper[:-1], lower[1:])  # the bins partition the real line
    torch.testing.assert_close(
        dist.log_prob_bin(lower, upper), dist.log_prob(x), rtol=1e-9, atol=1e-9
    )


def test_discretized_logistic_bins_of_any_partition_sum_to_one_and_match_scipy():
    dist = DiscretizedLogistic(torch.tensor([0.2], dtype=F64), torch.tensor([-2.0], dtype=F64))
    g = torch.Generator().manual_seed(5)
    inner = torch.sort(torch.rand(30, generator=g, dtype=F64) * 1.6 - 0.3).values  # data units
    edges = torch.cat(
        [torch.tensor([-math.inf], dtype=F64), inner, torch.tensor([math.inf], dtype=F64)]
    )
    masses = dist.log_prob_bin(edges[:-1], edges[1:]).exp()
    assert masses.sum().item() == pytest.approx(1.0, abs=1e-12)
    expected = np.diff(stats.logistic.cdf(2 * edges.numpy() - 1, 0.2, math.exp(-2.0)))
    np.testing.assert_allclose(masses.numpy(), expected, rtol=1e-9, atol=1e-15)


def test_discretized_logistic_bin_mass_is_accurate_deep_in_both_tails():
    s = math.exp(-4.0)
    dist = DiscretizedLogistic(torch.zeros(2, dtype=F64), torch.full((2,), -4.0, dtype=F64))
    lower = torch.tensor([0.90, 0.0], dtype=F64)  # y in [0.8, 0.9] and [-1, -0.9]: ~45 scales out
    upper = torch.tensor([0.95, 0.05], dtype=F64)
    expected = [
        np.log(stats.logistic.sf(0.8, 0, s) - stats.logistic.sf(0.9, 0, s)),
        np.log(stats.logistic.cdf(-0.9, 0, s) - stats.logistic.cdf(-1.0, 0, s)),
    ]
    np.testing.assert_allclose(dist.log_prob_bin(lower, upper).numpy(), expected, rtol=1e-10)


def _mixture_f64(
    seed: int, channels: int, num_bins: int = 256, size=(2, 3, 4)
) -> DiscretizedLogisticMixture:
    g = torch.Generator().manual_seed(seed)
    batch, height, width = size
    m = 3
    return DiscretizedLogisticMixture(
        logit_weights=torch.randn(batch, m, height, width, generator=g, dtype=F64),
        means=torch.rand(batch, m, channels, height, width, generator=g, dtype=F64) * 2 - 1,
        log_scales=torch.rand(batch, m, channels, height, width, generator=g, dtype=F64) * 3 - 4,
        num_bins=num_bins,
    )


def test_mixture_cdf_is_the_weighted_scipy_logistic_cdf():
    dist = _mixture_f64(seed=0, channels=3)
    x = torch.rand(2, 3, 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    weights = torch.softmax(dist.logit_weights, 1).unsqueeze(2).numpy()  # (B, M, 1, H, W)
    component_cdfs = stats.logistic.cdf(
        2 * x.unsqueeze(1).numpy() - 1, dist.means.numpy(), dist.log_scales.exp().numpy()
    )
    np.testing.assert_allclose(dist.cdf(x).numpy(), (weights * component_cdfs).sum(1), rtol=1e-12)


def test_mixture_icdf_by_bisection_inverts_cdf():
    dist = _mixture_f64(seed=1, channels=3)
    g = torch.Generator().manual_seed(2)
    u = torch.rand(2, 3, 3, 4, generator=g, dtype=F64) * 0.998 + 0.001
    x = dist.icdf(u)
    torch.testing.assert_close(dist.cdf(x), u, rtol=0, atol=1e-12)
    x0 = torch.rand(2, 3, 3, 4, generator=g, dtype=F64)
    torch.testing.assert_close(dist.icdf(dist.cdf(x0)), x0, rtol=0, atol=1e-9)
    x32 = DiscretizedLogisticMixture(
        dist.logit_weights.float(), dist.means.float(), dist.log_scales.float()
    ).icdf(u.float())
    torch.testing.assert_close(x32.double(), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixture_bin_mass_equals_log_prob(channels):
    dist = _mixture_f64(seed=3, channels=channels, num_bins=17)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 17, (2, channels, 3, 4), generator=g).to(F64) / 16
    x[0, :, 0, 0], x[0, :, 0, 1] = 0.0, 1.0  # both open edge bins
    lower, upper = dist.bin_edges(x)
    torch.testing.assert_close(
        dist.log_prob_bin(lower, upper), dist.log_prob(x), rtol=1e-9, atol=1e-9
    )
    if channels == 1:  # one channel: the box mass is the cdf difference
        mass = dist.cdf(upper) - dist.cdf(lower)
        torch.testing.assert_close(
            dist.log_prob_bin(lower, upper), mass.log().squeeze(1), rtol=1e-9, atol=1e-9
        )


def test_mixture_bins_partitioning_the_line_sum_to_one():
    dist = _mixture_f64(seed=5, channels=1, size=(1, 1, 1))
    g = torch.Generator().manual_seed(6)
    inner = torch.sort(torch.rand(40, generator=g, dtype=F64) * 1.4 - 0.2).values
    edges = torch.cat(
        [torch.tensor([-math.inf], dtype=F64), inner, torch.tensor([math.inf], dtype=F64)]
    )
    lower, upper = edges[:-1].view(1, 1, 1, -1), edges[1:].view(1, 1, 1, -1)  # (1, C=1, 1, 41)
    expanded = DiscretizedLogisticMixture(
        dist.logit_weights.expand(-1, -1, -1, 41),
        dist.means.expand(-1, -1, -1, -1, 41),
        dist.log_scales.expand(-1, -1, -1, -1, 41),
    )
    assert expanded.log_prob_bin(lower, upper).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_bernoulli_cdf_icdf_and_bin_mass_match_scipy():
    logits = torch.tensor([-3.0, -0.2, 0.0, 1.5, 20.0], dtype=F64)
    p = torch.sigmoid(logits).numpy()
    dist = Bernoulli(logits)
    for value in (-0.5, 0.0, 0.5, 1.0, 1.5):  # SciPy forms 1 - p, inexact where p is near 1
        np.testing.assert_allclose(
            dist.cdf(torch.full_like(logits, value)).numpy(),
            stats.bernoulli.cdf(value, p),
            rtol=1e-7,
        )
    for x in (0.0, 1.0):
        xs = torch.full_like(logits, x)
        torch.testing.assert_close(dist.icdf(dist.cdf(xs)), xs)
        torch.testing.assert_close(dist.log_prob_bin(xs - 0.5, xs + 0.5), dist.log_prob(xs))
    u = torch.tensor([0.3], dtype=F64).expand(5)
    np.testing.assert_array_equal(dist.icdf(u).numpy(), stats.bernoulli.ppf(0.3, p))
    everything = dist.log_prob_bin(
        torch.full_like(logits, -math.inf), torch.full_like(logits, math.inf)
    )
    torch.testing.assert_close(everything, torch.zeros_like(logits), rtol=0, atol=1e-12)
    assert torch.all(
        dist.log_prob_bin(torch.full_like(logits, 0.2), torch.full_like(logits, 0.9)) == -math.inf
    )


def test_bernoulli_icdf_of_uniforms_has_frequency_p():
    g = torch.Generator().manual_seed(7)
    logits = torch.tensor([-1.0, 0.3, 2.0]).expand(200_000, 3)
    frequency = Bernoulli(logits).icdf(torch.rand(200_000, 3, generator=g)).mean(0)
    torch.testing.assert_close(frequency, torch.sigmoid(logits[0]), rtol=0, atol=5e-3)


# ---- sampling and temperature ----------------------------------------------------------------


def test_temperature_one_reproduces_the_untempered_samples_bit_for_bit():
    q, _ = _gaussians()
    noise = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(8))
    assert torch.equal(q.rsample(noise), q.mean + q.std * noise)
    assert torch.equal(q.rsample(noise, temperature=1.0), q.mean + q.std * noise)
    assert torch.equal(
        q.sample(torch.Generator().manual_seed(9)),
        q.mean + q.std * torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(9)),
    )
    bernoulli = Bernoulli(q.log_var)
    assert torch.equal(
        bernoulli.sample(torch.Generator().manual_seed(10), temperature=1.0),
        torch.bernoulli(bernoulli.mean, generator=torch.Generator().manual_seed(10)),
    )
    logistic = _logistic_f64()
    assert torch.equal(
        logistic.sample(torch.Generator().manual_seed(11)),
        logistic.sample(torch.Generator().manual_seed(11), temperature=1.0),
    )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_the_gaussian_sample_std(temperature):
    q = DiagonalGaussian(
        torch.tensor([1.0, -2.0]).expand(100_000, 2), torch.tensor([0.0, -1.0]).expand(100_000, 2)
    )
    z = q.sample(torch.Generator().manual_seed(12), temperature=temperature)
    torch.testing.assert_close(z.mean(0), q.mean[0], rtol=0, atol=0.02 * temperature)
    torch.testing.assert_close(z.std(0), temperature * q.std[0], rtol=0.02, atol=0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_the_discretized_logistic_sample_std(temperature):
    s = math.exp(-3.0)
    dist = DiscretizedLogistic(torch.zeros(200_000), torch.full((200_000,), -3.0))
    x = dist.sample(torch.Generator().manual_seed(13), temperature=temperature)
    assert torch.all(x * 255 == torch.round(x * 255))  # on the data grid
    data_std = (
        temperature * s * math.pi / math.sqrt(3) / 2
    )  # logistic std, halved by y -> (y + 1) / 2
    assert x.std().item() == pytest.approx(data_std, rel=0.03)
    assert x.mean().item() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_the_bernoulli_logits(temperature):
    logits = torch.tensor([-1.0, 0.5, 2.0]).expand(200_000, 3)
    x = Bernoulli(logits).sample(torch.Generator().manual_seed(14), temperature=temperature)
    torch.testing.assert_close(x.mean(0), torch.sigmoid(logits[0] / temperature), rtol=0, atol=5e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_mixture_sample_draws_components_with_tempered_weights_and_scales(temperature):
    # three well separated components: the bin of a sample tells its component
    n = 100_000
    logit_weights = torch.tensor([0.0, 1.0, -0.5]).view(1, 3, 1, 1).expand(1, 3, 1, n)
    means = torch.tensor([-0.6, 0.0, 0.6]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 1, n)
    log_scales = torch.full((1, 3, 1, 1, n), -4.0)
    dist = DiscretizedLogisticMixture(logit_weights, means, log_scales)
    x = dist.sample(torch.Generator().manual_seed(15), temperature=temperature).flatten()
    component = torch.bucketize(x, torch.tensor([0.35, 0.65]))  # data units: 0.2, 0.5, 0.8
    frequency = torch.bincount(component, minlength=3).double() / n
    expected = torch.softmax(torch.tensor([0.0, 1.0, -0.5], dtype=F64) / temperature, 0)
    torch.testing.assert_close(frequency, expected, rtol=0, atol=5e-3)
    middle = x[component == 1]
    assert middle.std().item() == pytest.approx(
        temperature * math.exp(-4.0) * math.pi / math.sqrt(3) / 2, rel=0.05
    )


def _two_component_mixture(num_pixels: int, num_bins: int) -> DiscretizedLogisticMixture:
    """One mixture repeated over `num_pixels` pixels of a (1, C=1, 1, num_pixels) image."""
    return DiscretizedLogisticMixture(
        torch.tensor([0.3, -0.4]).view(1, 2, 1, 1).expand(1, 2, 1, num_pixels),
        torch.tensor([-0.2, 0.5]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, num_pixels),
        torch.tensor([-1.0, -2.0]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, num_pixels),
        num_bins=num_bins,
    )


def test_discretized_samples_follow_their_log_prob():
    g = torch.Generator().manual_seed(16)
    n, num_bins = 200_000, 9
    grid = torch.arange(num_bins) / (num_bins - 1)
    cases = [
        (
            _two_component_mixture(n, num_bins),
            _two_component_mixture(num_bins, num_bins).log_prob(grid.view(1, 1, 1, -1)).flatten(),
        ),
        (
            DiscretizedLogistic(torch.full((n,), 0.3), torch.full((n,), -1.5), num_bins=num_bins),
            DiscretizedLogistic(torch.full((9,), 0.3), torch.full((9,), -1.5), num_bins).log_prob(
                grid
            ),
        ),
    ]
    for dist, log_prob in cases:
        bins = torch.round(dist.sample(g).flatten() * (num_bins - 1)).long()
        frequency = torch.bincount(bins, minlength=num_bins).double() / n
        torch.testing.assert_close(frequency, log_prob.exp().double(), rtol=0, atol=4e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_refused(temperature):
    q = DiagonalGaussian.standard_like(torch.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        q.sample(temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        Bernoulli(torch.zeros(2)).sample(temperature=temperature)
