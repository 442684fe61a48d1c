"""The frozen attentive probe: it finds a label carried by one small channel, it is blind to per-channel
scale (features are standardised with train-set statistics), and it does not invent accuracy from noise."""
import torch

from engine.eval.probe import train_probe


def _features(n, seed, signal_scale=1e-3):
    """[n, 12 tokens, 16 channels]: 14 loud noise channels; the label's two bits are the signs of the tiny
    channels 3 and 5 (on every token, with a little noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, 16, generator=g) * 50.0
    y = torch.randint(0, 4, (n,), generator=g)
    for ch, bit in ((3, y % 2), (5, y // 2)):
        x[:, :, ch] = (torch.where(bit == 1, 1.0, -1.0)[:, None] + 0.3 * torch.randn(n, 12, generator=g)) * signal_scale
    return x, y


def test_probe_reads_a_small_channel():
    tx, ty = _features(512, 0)
    vx, vy = _features(256, 1)
    r = train_probe(tx, ty, vx, vy, 4, epochs=30)
    assert r["val_acc"] > 0.9, r


def test_probe_ignores_channel_scale():
    tx, ty = _features(256, 0)
    vx, vy = _features(128, 1)
    scale_D = torch.logspace(-3, 3, 16)
    a = train_probe(tx, ty, vx, vy, 4, epochs=10)
    b = train_probe(tx * scale_D, ty, vx * scale_D, vy, 4, epochs=10)
    assert abs(a["val_acc"] - b["val_acc"]) <= 2 / 128 and abs(a["train_acc"] - b["train_acc"]) <= 2 / 256


def test_probe_on_noise_stays_near_chance():
    g = torch.Generator().manual_seed(3)
    tx, vx = torch.randn(256, 12, 16, generator=g), torch.randn(512, 12, 16, generator=g)
    ty, vy = torch.randint(0, 4, (256,), generator=g), torch.randint(0, 4, (512,), generator=g)
    r = train_probe(tx, ty, vx, vy, 4, epochs=20)
    assert r["val_acc"] < 0.4, r
