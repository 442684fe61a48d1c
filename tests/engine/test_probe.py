"""The frozen probes (attentive and linear): each finds a label carried by one small channel, is blind to
per-channel scale (features are standardised with train-set statistics), and does not invent accuracy
from noise; the linear one averages tokens, so it cannot read where a patch is.
The raw-pixel baseline: its tokens are a patch embedding's, unprojected, and it knows where each one is."""
import pytest
import torch
from torch import nn

from engine.eval.probe import extract_pixels, pixel_tokens, probe_pixels, train_linear_probe, train_probe


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


# ------------------------------------------------------------------------------ the linear probe
def test_linear_probe_reads_a_small_channel_at_any_scale():
    tx, ty = _features(512, 0)
    vx, vy = _features(256, 1)
    a = train_linear_probe(tx, ty, vx, vy, 4)
    assert a["val_acc"] > 0.9, a
    scale_D = torch.logspace(-3, 3, 16)
    b = train_linear_probe(tx * scale_D, ty, vx * scale_D, vy, 4)
    assert abs(a["val_acc"] - b["val_acc"]) <= 2 / 256, (a, b)
    assert train_linear_probe(tx, ty, vx, vy, 4) == a  # full-batch L-BFGS: no randomness


def test_linear_probe_on_noise_stays_near_chance():
    g = torch.Generator().manual_seed(3)
    tx, vx = torch.randn(256, 12, 16, generator=g), torch.randn(512, 12, 16, generator=g)
    ty, vy = torch.randint(0, 4, (256,), generator=g), torch.randint(0, 4, (512,), generator=g)
    r = train_linear_probe(tx, ty, vx, vy, 4)
    assert r["val_acc"] < 0.35, r


# ---------------------------------------------------------------------------- the raw-pixel baseline
@pytest.mark.parametrize("shape,p,t", [((2, 3, 4, 16, 24), 8, 2), ((1, 3, 3, 10, 5), 5, 3), ((3, 2, 1, 6, 6), 3, 1)])
def test_pixel_tokens_are_an_unprojected_patch_embedding(shape, p, t):
    # a Conv3d patch embedding whose kernel is the identity on (channel, t, y, x) returns the pixels
    # themselves: pixel_tokens must give exactly that, in the embedding's token order
    C = shape[1]
    K = C * t * p * p
    conv = nn.Conv3d(C, K, kernel_size=(t, p, p), stride=(t, p, p), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(K).view(K, C, t, p, p))
    x = torch.randn(shape)
    want = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pixel_tokens(x, p, t), want, rtol=0, atol=1e-6)
    x_nc = torch.randn(shape[:2] + (shape[2] + 1,) + shape[3:])[:, :, 1:]  # a non-contiguous view
    torch.testing.assert_close(pixel_tokens(x_nc, p, t), conv(x_nc.contiguous()).flatten(2).transpose(1, 2),
                               rtol=0, atol=1e-6)


def test_pixel_tokens_images_and_bad_shapes():
    conv = nn.Conv2d(3, 48, 4, 4, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(48).view(48, 3, 4, 4))
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(pixel_tokens(x, 4), conv(x).flatten(2).transpose(1, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="5x8x8 does not split into 2x4x4"):
        pixel_tokens(torch.zeros(1, 3, 5, 8, 8), 4, 2)
    with pytest.raises(ValueError, match=r"expected \[B, C, T, H, W\]"):
        pixel_tokens(torch.zeros(3, 8, 8), 4)


class _Blobs(torch.utils.data.Dataset):
    """Clips [3, 2, 8, 8] keyed (index, seed) like the engine's datasets: label 1 puts a red patch in the
    top-left 4x4 patch of both frames, label 0 in the bottom-right one; noise elsewhere. (Red, not bright:
    red up and green and blue down leaves the token's mean, which the probe's per-token LayerNorm removes.)"""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 2, 8, 8, generator=g) * 0.3
        self.y = torch.arange(n) % 2
        for i in range(n):
            sl = (slice(None), slice(None), slice(0, 4), slice(0, 4)) if self.y[i] else \
                (slice(None), slice(None), slice(4, 8), slice(4, 8))
            self.x[i][sl] += torch.tensor([2.0, -1.0, -1.0]).view(3, 1, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, key):
        i, _seed = key
        return self.x[i], int(self.y[i])


def test_probe_pixels_reads_where_the_pixels_are():
    r = probe_pixels(_Blobs(256, 0), _Blobs(64, 1), patch_size=4, tubelet_size=2, epochs=30)
    assert r["attentive"]["val_acc"] >= 0.95 and r["attentive"]["chance"] == r["linear"]["chance"] == 0.5, r
    # the linear probe averages the tokens: the same red patch in another place averages the same
    assert r["linear"]["val_acc"] <= 0.7, r
    with pytest.raises(ValueError, match="probe kinds"):
        probe_pixels(_Blobs(8, 0), _Blobs(8, 1), patch_size=4, tubelet_size=2, kinds=("knn",))


def test_pixel_baseline_needs_its_position_code():
    # the probe pools tokens without regard to order: the same pixels without their position code cannot
    # tell top-left from bottom-right (the reason extract_pixels appends one)
    tx, ty = extract_pixels(_Blobs(256, 0), 4, 2, positions=False)
    vx, vy = extract_pixels(_Blobs(64, 1), 4, 2, positions=False)
    assert tx.shape == (256, 4, 96)
    assert train_probe(tx, ty, vx, vy, 2, epochs=30)["val_acc"] <= 0.75  # with the code: 1.0
    x = extract_pixels(_Blobs(4, 0), 4, 2)[0]
    assert x.shape == (4, 4, 96 + 1 + 2 + 2)  # grid 1 x 2 x 2: one-hot time, row, column
    torch.testing.assert_close(x[0, :, 96:], torch.tensor([[1., 1, 0, 1, 0], [1, 1, 0, 0, 1], [1, 0, 1, 1, 0],
                                                           [1, 0, 1, 0, 1]]))
