"""Noise schedules and samplers as small pure functions (variance-exploding form, x = x0 + sigma * eps).

A denoiser ``denoise(x, sigma, i) -> x0_estimate`` is all a sampler needs; ``i`` is the step index
(guidance uses it). ``after_step(i, x) -> x`` runs after every step and may replace the state
(identity guidance uses it to keep positions outside the mask on the unguided trajectory).
Stochastic samplers draw noise from ``generator`` only, so a seed fixes the result.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Denoiser = Callable[[torch.Tensor, float, int], torch.Tensor]
AfterStep = Optional[Callable[[int, torch.Tensor], torch.Tensor]]


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  start: float = 0.0) -> torch.Tensor:
    """``steps`` decreasing sigmas on the Karras et al. (2022) ramp, from ramp position ``start``
    (0 = sigma_max, 1 = sigma_min) down to sigma_min, followed by a final 0."""
    if steps <= 0:
        return torch.zeros(1, dtype=torch.float64)
    t = torch.linspace(start, 1.0, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + t * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def sdedit_sigmas(steps: int, strength: float, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """SDEdit schedule: start ``strength`` of the way down from sigma_min towards sigma_max
    (1 = from pure noise), then ``steps`` steps to 0. strength 0 or steps 0 -> [0] (no change)."""
    strength = float(min(max(strength, 0.0), 1.0))
    if steps <= 0 or strength == 0.0:
        return torch.zeros(1, dtype=torch.float64)
    return karras_sigmas(steps, sigma_min, sigma_max, rho, start=1.0 - strength)


def _apply(after_step: AfterStep, i: int, x: torch.Tensor) -> torch.Tensor:
    return after_step(i, x) if after_step is not None else x


def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, after_step: AfterStep = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """First-order probability-flow ODE (Karras Alg. 1 without the correction)."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, s, i)) / s
        x = _apply(after_step, i, x + (s_next - s) * d)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, after_step: AfterStep = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Second-order Heun (Karras Alg. 1); the last step to sigma 0 is Euler."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, s, i)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - denoise(x_next, s_next, i)) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = _apply(after_step, i, x_next)
    return x


def sample_ddim(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, after_step: AfterStep = None,
                generator: Optional[torch.Generator] = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM in sigma form: x_next = x0 + sqrt(s_next^2 - c^2) * eps_hat + c * z,
    c = eta * s_next * sqrt(1 - s_next^2 / s^2). eta 0 is deterministic."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, s, i)
        eps = (x - x0) / s
        c = eta * s_next * max(1 - (s_next / s) ** 2, 0.0) ** 0.5
        x_next = x0 + (s_next ** 2 - c ** 2) ** 0.5 * eps
        if c > 0:
            x_next = x_next + c * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = _apply(after_step, i, x_next)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, after_step: AfterStep = None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep data-prediction form in log-sigma time."""
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, s, i)
        if s_next == 0:
            x = _apply(after_step, i, x0)
            break
        t, t_next = -torch.log(torch.tensor(s)).item(), -torch.log(torch.tensor(s_next)).item()
        h = t_next - t
        d = x0
        if old_x0 is not None:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = _apply(after_step, i, (s_next / s) * x - torch.expm1(torch.tensor(-h)).item() * d)
        old_x0, h_last = x0, h
    return x


# by the names of options.SAMPLERS, in its order
SAMPLER_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
}


def get_sampler(name: str):
    try:
        return SAMPLER_FUNCTIONS[name]
    except KeyError:
        from ...errors import FaceRefineError
        raise FaceRefineError(f"unknown sampler '{name}'; choose one of {sorted(SAMPLER_FUNCTIONS)}") from None


def denoiser_steps(name: str, sigmas: torch.Tensor) -> int:
    """How many denoiser calls a sampler makes on this schedule (for progress bars)."""
    n = len(sigmas) - 1
    if name == "heun":
        return n + sum(1 for i in range(n) if float(sigmas[i + 1]) > 0)
    return n
