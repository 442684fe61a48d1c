"""engine.core.step.adamw: the fused AdamW the trainers use makes the per-parameter loop's updates."""
import torch

from engine.core.step import adamw, param_groups


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.GELU(), torch.nn.Linear(13, 3))


def test_fused_adamw_matches_the_per_parameter_loop():
    a, b = _model(), _model()
    opt_a = adamw(param_groups([a]), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    opt_b = torch.optim.AdamW(param_groups([b]), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05,
                              foreach=False)
    assert all(g["fused"] for g in opt_a.param_groups)
    x, y = torch.randn(32, 7), torch.randn(32, 3)
    for _ in range(20):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        # 20 steps of size ~lr: rounding differences stay at float32 epsilon times the step sizes
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=20 * 1e-2 * 1e-6)
    # the state a checkpoint carries is the loop's, key for key
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_parameters_elsewhere_keep_the_default_optimizer():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = adamw([p], lr=1e-3)
    assert not opt.param_groups[0]["fused"]
