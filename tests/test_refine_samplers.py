"""Samplers and schedules against the analytic score of a known Gaussian latent distribution."""
import pytest
import torch

from facerefine.core.refine.samplers import SAMPLER_FUNCTIONS, denoiser_steps, get_sampler, karras_sigmas, sdedit_sigmas
from facerefine.errors import FaceRefineError

MU, STD = 1.5, 0.7  # per-element data distribution N(MU, STD^2)


def gaussian_denoiser(mu, std):
    """Exact E[x0 | x_sigma] for x0 ~ N(mu, std^2), x_sigma = x0 + sigma * eps."""
    def denoise(x, sigma, i):
        return mu + std ** 2 / (std ** 2 + sigma ** 2) * (x - mu)
    return denoise


# (sampler, steps, extra kwargs): first-order samplers need more steps for the same accuracy
CASES = [("dpmpp_2m", 30, {}), ("heun", 30, {}), ("euler", 200, {}), ("ddim", 200, {}),
         ("ddim", 200, {"eta": 1.0})]


@pytest.mark.parametrize("name,steps,kwargs", CASES)
def test_sampler_recovers_gaussian_from_noise(name, steps, kwargs):
    g = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x = MU + (STD ** 2 + float(sigmas[0]) ** 2) ** 0.5 * torch.randn(40000, generator=g, dtype=torch.float64)
    y = get_sampler(name)(gaussian_denoiser(MU, STD), x, sigmas, generator=g, **kwargs)
    assert abs(y.mean().item() - MU) < 0.03
    assert abs(y.std().item() / STD - 1) < 0.05


@pytest.mark.parametrize("name", sorted(SAMPLER_FUNCTIONS))
def test_sdedit_start_keeps_the_distribution(name):
    """Data noised to the strength's sigma and denoised stays N(MU, STD^2) (a per-element multi-dim latent)."""
    g = torch.Generator().manual_seed(1)
    steps = 20 if name in ("dpmpp_2m", "heun") else 120
    sigmas = sdedit_sigmas(steps, 0.5)
    mu = torch.linspace(-1, 1, 8, dtype=torch.float64).view(1, 8, 1, 1)
    x0 = mu + STD * torch.randn(4000, 8, 2, 2, generator=g, dtype=torch.float64)
    x = x0 + float(sigmas[0]) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    y = SAMPLER_FUNCTIONS[name](gaussian_denoiser(mu, STD), x, sigmas, generator=g)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), mu.flatten(), atol=0.03)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.full((8,), STD, dtype=torch.float64), rtol=0.05)


def test_wrong_variance_is_detected():
    """The check above can fail: a denoiser for the wrong variance gives the wrong spread."""
    g = torch.Generator().manual_seed(2)
    sigmas = karras_sigmas(30, 0.002, 80.0)
    x = MU + (STD ** 2 + float(sigmas[0]) ** 2) ** 0.5 * torch.randn(20000, generator=g, dtype=torch.float64)
    y = SAMPLER_FUNCTIONS["dpmpp_2m"](gaussian_denoiser(MU, 2 * STD), x, sigmas)
    assert abs(y.std().item() / STD - 1) > 0.3


def test_schedules():
    s = karras_sigmas(10, 0.002, 80.0)
    assert len(s) == 11 and s[-1] == 0 and abs(float(s[0]) - 80) < 1e-9 and abs(float(s[-2]) - 0.002) < 1e-9
    assert bool((s[:-1] > s[1:]).all())
    weak, strong = sdedit_sigmas(10, 0.2), sdedit_sigmas(10, 0.8)
    assert len(weak) == len(strong) == 11 and float(weak[0]) < float(strong[0]) < 80
    assert abs(float(sdedit_sigmas(10, 1.0)[0]) - 80) < 1e-9
    assert len(sdedit_sigmas(0, 0.5)) == 1 and len(sdedit_sigmas(10, 0.0)) == 1


def test_after_step_and_call_counts():
    calls, seen = [], []

    def denoise(x, sigma, i):
        calls.append(i)
        return x * 0

    sigmas = karras_sigmas(5)
    SAMPLER_FUNCTIONS["heun"](denoise, torch.ones(3), sigmas, after_step=lambda i, x: seen.append(i) or x)
    assert seen == [0, 1, 2, 3, 4] and len(calls) == denoiser_steps("heun", sigmas) == 9
    with pytest.raises(FaceRefineError, match="unknown sampler"):
        get_sampler("nope")
