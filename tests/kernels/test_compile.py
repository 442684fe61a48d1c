"""torch.compile(fullgraph=True) traces the jepa:: custom ops (gather fwd+bwd, scatter, ema_) on CPU."""
import torch

import kernels


def test_compiled_step_gather_ema():
    torch.manual_seed(0)
    B, N, D = 2, 10, 8
    w = torch.randn(D, D, requires_grad=True)
    w_tgt = w.detach().clone()
    rows = torch.tensor([0, 3, 4, 11, 15, 19])

    def step(x_BND, m):
        h_BND = x_BND @ w
        z_TD = kernels.gather_tokens(h_BND, rows)
        with torch.no_grad():
            t_TD = kernels.gather_layer_norm(x_BND @ w_tgt, rows)
        loss = (z_TD - t_TD).abs().mean()
        with torch.no_grad():
            kernels.ema_([w_tgt], [w], m)
        return loss

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x = torch.randn(B, N, D)
    w_tgt0 = w_tgt.clone()
    loss = compiled(x, torch.tensor(0.9))
    loss.backward()   # through the compiled graph's registered autograd (scatter_rows)

    # eager reference of the same step
    w2 = w.detach().clone().requires_grad_(True)
    h = (x @ w2).reshape(B * N, D)[rows]
    t = torch.nn.functional.layer_norm((x @ w_tgt0), (D,)).reshape(B * N, D)[rows]
    ref = (h - t).abs().mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(w_tgt, 0.9 * w_tgt0 + 0.1 * w.detach())
    w.grad = None
    # a new momentum value is a tensor value, not a constant: no recompile
    compiled(x, torch.tensor(0.8))
