"""SIGReg (LeJEPA): push a batch of embeddings towards an isotropic standard normal, the distribution
that LeJEPA shows minimises downstream risk, by testing random 1-D projections of it for normality.

    reg = SIGReg(num_projections=256, knots=17, t_max=3.0)
    loss = loss + coeff * reg(z_ND)                # any [N, D] embeddings (tokens, CLS, latents)

For M random unit directions a_m (new ones every call),
each projection x = z @ a_m of the N samples is scored by the Epps-Pulley statistic against N(0, 1):

    EP(x) = N * integral over t of |mean_n exp(i t x_n) - exp(-t^2 / 2)|^2 * exp(-t^2 / 2) dt

The integrand is even in t, so it is integrated on [0, t_max] at `knots` evenly spaced points by the
trapezoid rule, doubled. SIGReg is the mean of EP over the M projections: O(N * D * M) for the
projections and O(N * M * knots) for the characteristic function, linear in batch and width.
"""
from __future__ import annotations

import torch
from torch import nn


def epps_pulley_ref(x_NM: torch.Tensor, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """The Epps-Pulley statistic of each column of x [N, M] against N(0, 1): [M] (fp32 math).

    Equivalent torch code (the definition):
        t = linspace(0, t_max, knots); w = trapezoid weights on [0, t_max], doubled (the integrand is even)
        err_MK = (cos(x t).mean(0) - exp(-t^2/2))^2 + sin(x t).mean(0)^2
        EP_M = N * err_MK @ (w * exp(-t^2/2))
    """
    if knots < 2:
        raise ValueError(f"epps_pulley: knots must be >= 2, got {knots}")
    x = x_NM.float()
    t_K = torch.linspace(0.0, t_max, knots, device=x.device)
    dt = t_max / (knots - 1)
    w_K = torch.full((knots,), 2 * dt, device=x.device)
    w_K[0] = w_K[-1] = dt
    phi_K = torch.exp(-0.5 * t_K * t_K)
    xt_NMK = x.unsqueeze(-1) * t_K
    err_MK = (torch.cos(xt_NMK).mean(0) - phi_K).square() + torch.sin(xt_NMK).mean(0).square()
    return x.shape[0] * (err_MK @ (w_K * phi_K))


def random_directions(dim: int, num: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """[dim, num] random unit columns, drawn on the CPU from `generator` (default: torch's global RNG,
    which the trainers save and restore, so a resumed run draws what an uninterrupted one would)."""
    A = torch.randn(dim, num, generator=generator)
    return (A / A.norm(dim=0, keepdim=True)).to(device)


class SIGReg(nn.Module):
    def __init__(self, num_projections: int = 256, knots: int = 17, t_max: float = 3.0):
        super().__init__()
        if num_projections < 1 or knots < 2 or t_max <= 0:
            raise ValueError(f"SIGReg: need num_projections >= 1, knots >= 2, t_max > 0; got "
                             f"{num_projections}, {knots}, {t_max}")
        self.num_projections, self.knots, self.t_max = int(num_projections), int(knots), float(t_max)

    def forward(self, z_ND: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean Epps-Pulley statistic of z [N, D] over new random directions (a 0-d fp32 tensor)."""
        if z_ND.dim() != 2:
            raise ValueError(f"SIGReg: expected embeddings [N, D], got shape {tuple(z_ND.shape)}")
        A_DM = random_directions(z_ND.shape[1], self.num_projections, z_ND.device, generator)
        return epps_pulley_ref(z_ND.float() @ A_DM, self.t_max, self.knots).mean()
