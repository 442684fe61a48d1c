"""engine.core.ema.TargetEMA: one flat call when the parameters lie end to end in one buffer, the
multi-tensor call otherwise; the same numbers either way, on whole tensors."""
import pytest
import torch
from torch import nn

from engine.core import ema as E


class _Pair(nn.Module):
    def __init__(self, flat: bool):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
        self.target_encoder = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
        if flat:  # each side's parameters become views of one buffer, in order
            for m in (self.encoder, self.target_encoder):
                ps = list(m.parameters())
                buf = torch.cat([p.detach().reshape(-1) for p in ps])
                off = 0
                for p in ps:
                    p.data = buf[off:off + p.numel()].view_as(p)
                    off += p.numel()


@pytest.mark.parametrize("flat", [True, False])
def test_target_ema_matches_the_definition(flat, monkeypatch):
    torch.manual_seed(0)
    model = _Pair(flat)
    calls = []
    real = E.kernels.ema_
    monkeypatch.setattr(E.kernels, "ema_", lambda t, s, m: (calls.append(torch.is_tensor(t)), real(t, s, m)))
    want = [0.9 * t.detach() + 0.1 * s.detach()
            for t, s in zip(model.target_encoder.parameters(), model.encoder.parameters())]
    E.TargetEMA(model)(0.9)
    assert calls == [flat]   # flat buffers: one call on two tensors; else one call on two lists
    for w, t in zip(want, model.target_encoder.parameters()):
        torch.testing.assert_close(t, w, rtol=0, atol=4 * torch.finfo(torch.float32).eps * w.abs().max().item())


def test_as_flat_needs_adjacent_views_in_order():
    buf = torch.arange(10.0)
    a, b = buf[:4].view(2, 2), buf[4:10]
    assert torch.equal(E._as_flat([a, b]), buf)
    assert E._as_flat([b, a]) is None                # out of order
    assert E._as_flat([a, buf[6:10]]) is None        # a gap
    assert E._as_flat([a, torch.zeros(6)]) is None   # another storage


def test_target_ema_refuses_a_non_fp32_target_and_unwraps():
    model = _Pair(False)
    wrapper = nn.Module()
    wrapper.module = model
    assert E.unwrap(wrapper) is model
    model.target_encoder.to(torch.bfloat16)
    with pytest.raises(TypeError, match="must be fp32"):
        E.TargetEMA(wrapper)
