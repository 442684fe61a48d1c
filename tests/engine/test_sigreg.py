"""SIGReg (engine.sigreg): the Epps-Pulley statistic, its use as a loss term, its config keys."""
import math

import pytest
import torch

from engine.config import ConfigError, load_config
from engine.sigreg import SIGReg, epps_pulley_ref


def test_epps_pulley_matches_the_integral_it_defines():
    """With many knots the statistic is N * integral over [-t_max, t_max] of |ecf - cf|^2 * exp(-t^2/2)."""
    torch.manual_seed(0)
    x = 1.3 * torch.randn(200, 2, dtype=torch.float64) + 0.2
    t = torch.linspace(-3.0, 3.0, 4001, dtype=torch.float64)
    ecf = torch.exp(1j * x[:, :, None] * t).mean(0)                     # [M, K] complex
    integrand = (ecf - torch.exp(-t * t / 2)).abs() ** 2 * torch.exp(-t * t / 2)
    want = 200 * torch.trapezoid(integrand, t, dim=-1)
    got = epps_pulley_ref(x, t_max=3.0, knots=1001).double()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0.0)


def test_statistic_separates_normal_from_not_normal():
    torch.manual_seed(0)
    reg = SIGReg(num_projections=64)
    normal = float(reg(torch.randn(1024, 32)))
    assert normal < 3.0                                    # O(1) under the null
    for bad in (3.0 * torch.randn(1024, 32), torch.randn(1024, 32) + 1.0,
                torch.randn(1024, 1).expand(-1, 32).contiguous()):   # wide, shifted, collapsed to one direction
        assert float(reg(bad)) > 30 * normal


def test_gradient_spreads_collapsed_embeddings():
    """Minimising SIGReg alone turns a rank-1 cloud into a full-rank one (the anti-collapse effect)."""
    torch.manual_seed(0)
    z = (torch.randn(128, 1) @ torch.randn(1, 8) + 0.01 * torch.randn(128, 8)).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.1)
    reg = SIGReg(num_projections=32)

    def eff_rank(x):
        s = torch.linalg.svdvals(x - x.mean(0))
        p = s / s.sum()
        return math.exp(float(-(p * p.clamp_min(1e-12).log()).sum()))

    before = eff_rank(z.detach())
    for _ in range(40):
        opt.zero_grad()
        reg(z).backward()
        opt.step()
    assert before < 1.5 and eff_rank(z.detach()) > 5.5     # of at most 8


def test_config_keys_and_ema_none(tmp_path):
    cfg = load_config("configs/tiny_cpu.yaml", ["loss.sigreg_coeff=0.1", "loss.sigreg_projections=32",
                                                "optimization.ema=none"])
    assert cfg.loss.sigreg_coeff == 0.1 and cfg.optimization.ema == [0.0, 0.0]
    with pytest.raises(ConfigError, match="optimization.ema: none .* needs loss.sigreg_coeff"):
        load_config("configs/tiny_cpu.yaml", ["optimization.ema=none"])
    with pytest.raises(ConfigError, match="sigreg_knots"):
        load_config("configs/tiny_cpu.yaml", ["loss.sigreg_knots=1"])


def test_jepa_step_adds_the_term():
    from engine.builders import build_jepa, build_mask_sampler
    import numpy as np
    over = ["model.depth=1", "model.embed_dim=48", "model.num_heads=3", "model.pred_embed_dim=24",
            "data.batch_size=2", "loss.std_coeff=0", "loss.cov_coeff=0"]
    cfg0 = load_config("configs/tiny_cpu.yaml", over)
    cfg1 = load_config("configs/tiny_cpu.yaml", over + ["loss.sigreg_coeff=0.5"])
    x = torch.randn(2, 3, 8, 64, 64)
    masks = build_mask_sampler(cfg0)(2, np.random.default_rng(0))
    torch.manual_seed(0)
    m0 = build_jepa(cfg0)
    torch.manual_seed(0)
    m1 = build_jepa(cfg1)
    loss0, _ = m0(x, masks)
    loss1, info1 = m1(x, masks)
    assert float(info1["loss_sigreg"]) > 0
    torch.testing.assert_close(loss1, loss0 + 0.5 * info1["loss_sigreg"], rtol=1e-5, atol=1e-6)
