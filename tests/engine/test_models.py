"""Models: packed passes equal per-sample dense passes, positions, presets, bad input."""
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

import kernels
from engine.models import VIT_SIZES, Predictor, VisionTransformer
from engine.models.pos_embed import sincos_3d
from engine.models.rope import Rope3D
from engine.packing import pack_index_sets

TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_vit(**kw):
    args = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=48, depth=2, num_heads=3)
    args.update(kw)
    torch.manual_seed(0)
    return VisionTransformer(**args).eval()


def ragged_sets(N, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(N, generator=g)[:k].sort().values for k in lens]


@pytest.mark.parametrize("rope", [False, True])
def test_packed_encoder_equals_each_sample_alone(rope):
    # RoPE: head dim 20, so part of each head is not rotated
    enc = tiny_vit(use_rope=rope, embed_dim=60 if rope else 48, num_heads=3)
    x = torch.randn(3, 3, 4, 32, 32)
    N = enc.num_patches
    sets = ragged_sets(N, [1, 17, N])                           # one token, odd, full
    packed = pack_index_sets(sets, [0, 1, 2], N)
    with torch.no_grad():
        z_TD = enc.forward_packed(enc.embed(x), packed)
        for b, idx in enumerate(sets):
            alone = enc(x[b:b + 1], masks=[idx[None]])[0]
            lo, hi = int(packed.cu_seqlens[b]), int(packed.cu_seqlens[b + 1])
            torch.testing.assert_close(z_TD[lo:hi], alone, **TOL)
        full = enc(x)                                           # dense path == packed full set
        torch.testing.assert_close(z_TD[int(packed.cu_seqlens[2]):], full[2], **TOL)


def test_packed_gradients_equal_per_sample_gradients():
    enc = tiny_vit()
    x = torch.randn(2, 3, 4, 32, 32)
    sets = ragged_sets(enc.num_patches, [5, 23], seed=1)
    packed = pack_index_sets(sets, [0, 1], enc.num_patches)
    # a random readout: the sum of squares of the final LayerNorm's outputs is constant in its input,
    # so every gradient below it would be 0 by cancellation (rounding noise compared with noise)
    w_D = torch.randn(48, generator=torch.Generator().manual_seed(2))
    (enc.forward_packed(enc.embed(x), packed) @ w_D).square().sum().backward()
    g_packed = [p.grad.clone() for p in enc.parameters() if p.requires_grad]
    enc.zero_grad()
    sum((enc(x[b:b + 1], masks=[s[None]]) @ w_D).square().sum() for b, s in enumerate(sets)).backward()
    for a, b in zip(g_packed, [p.grad for p in enc.parameters() if p.requires_grad]):
        # each gradient sums per-token terms: the tolerance scales with the tensor's largest entry
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5 * b.abs().max().item())


def test_shared_rows_across_mask_configs_get_summed_gradients():
    """Two mask configs of one sample share tokens: the input gradient accumulates both."""
    enc = tiny_vit(depth=1)
    x_BND = enc.embed(torch.randn(1, 3, 4, 32, 32)).detach().requires_grad_(True)
    idx = torch.arange(10)
    packed = pack_index_sets([idx, idx], [0, 0], enc.num_patches)
    assert not packed.rows_unique()
    enc.forward_packed(x_BND, packed).sum().backward()
    g2 = x_BND.grad.clone()
    x_BND.grad = None
    enc.forward_packed(x_BND, pack_index_sets([idx], [0], enc.num_patches)).sum().backward()
    torch.testing.assert_close(g2, 2 * x_BND.grad)


@pytest.mark.parametrize("rope", [False, True])
def test_packed_predictor_equals_each_sample_alone(rope):
    enc = tiny_vit()
    torch.manual_seed(1)
    pred = Predictor(enc.grid, 48, predictor_embed_dim=40, depth=2, num_heads=2, use_rope=rope,
                     num_mask_tokens=2, zero_init_mask_tokens=False).eval()
    N = enc.num_patches
    ctx_sets, tgt_sets = ragged_sets(N, [3, 20], 2), ragged_sets(N, [9, 1], 3)
    ctx, tgt = pack_index_sets(ctx_sets, [0, 1], N), pack_index_sets(tgt_sets, [0, 1], N)
    z_TD = torch.randn(ctx.rows_T.numel(), 48)
    with torch.no_grad():
        p_TD = pred.forward_packed(z_TD, ctx, tgt, torch.tensor([1, 0]))
        for s in range(2):
            zc = z_TD[int(ctx.cu_seqlens[s]):int(ctx.cu_seqlens[s + 1])][None]
            alone = pred(zc, None, [ctx_sets[s][None]], [tgt_sets[s][None]], mask_index=[1, 0][s])[0]
            torch.testing.assert_close(p_TD[int(tgt.cu_seqlens[s]):int(tgt.cu_seqlens[s + 1])], alone, **TOL)
    assert p_TD.shape == (10, 48)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_predictor_last_block_on_target_rows_equals_the_full_block(monkeypatch, rope, checkpoint):
    # The last block attends from the target rows only and skips the context rows' projection and MLP;
    # outputs and every gradient equal those of the whole block with its target rows taken afterwards
    # (a sequence with no target rows and one with a single row included).
    import engine.models.layers as layers
    enc = tiny_vit()
    torch.manual_seed(1)
    pred = Predictor(enc.grid, 48, predictor_embed_dim=40, depth=2, num_heads=2, use_rope=rope, num_mask_tokens=2,
                     zero_init_mask_tokens=False, use_activation_checkpointing=checkpoint)
    N = enc.num_patches
    ctx_sets, tgt_sets = ragged_sets(N, [3, 20, 7], 2), ragged_sets(N, [9, 1, 0], 3)
    ctx, tgt = pack_index_sets(ctx_sets, [0, 1, 0], N), pack_index_sets(tgt_sets, [0, 1, 0], N)
    z0 = torch.randn(ctx.rows_T.numel(), 48)
    w = torch.randn(10, 48)
    runs = []
    for full in (False, True):
        if full:
            whole = layers.run_blocks
            monkeypatch.setattr(layers, "run_blocks", lambda blocks, x, tok, ckpt, out=None:
                                whole(blocks, x, tok, ckpt).index_select(0, out.rows) if out is not None
                                else whole(blocks, x, tok, ckpt))
        pred.zero_grad(set_to_none=True)
        z = z0.clone().requires_grad_()
        p = pred.forward_packed(z, ctx, tgt, torch.tensor([1, 0, 1]))
        (p * w).sum().backward()
        runs.append((p.detach(), z.grad, {n: q.grad for n, q in pred.named_parameters() if q.grad is not None}))
    (p1, dz1, g1), (p2, dz2, g2) = runs
    assert p1.shape == (10, 48) and g1.keys() == g2.keys()
    torch.testing.assert_close(p1, p2, **TOL)
    for a, b in [(dz1, dz2)] + [(g1[n], g2[n]) for n in g1]:
        # one scale per tensor: a bias gradient is a sum over rows and can be ~0 by cancellation
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * max(1.0, float(b.abs().max())))


def test_residual_predictor_adds_the_latest_earlier_context_feature_at_each_position():
    """model.pred_residual: prediction = plain prediction + the layer-normed context feature at the target's
    spatial position in the nearest earlier step of its own sequence's context (zero where there is none)."""
    grid = (4, 2, 2)                                             # 4 steps of 2 x 2 tokens, N = 16
    torch.manual_seed(0)
    plain = Predictor(grid, 12, predictor_embed_dim=8, depth=1, num_heads=2, zero_init_mask_tokens=False).eval()
    residual = Predictor(grid, 12, predictor_embed_dim=8, depth=1, num_heads=2, residual=True).eval()
    residual.load_state_dict(plain.state_dict())
    # sequence 0: all of step 0, position 1 at step 1, position 2 at step 2; sequence 1: step 1 only
    ctx_sets = [torch.tensor([0, 1, 2, 3, 5, 10]), torch.tensor([4, 5])]
    tgt_sets = [torch.tensor([4, 13, 14, 15]), torch.tensor([2, 9, 11])]
    # the context position each target carries forward (None: no earlier step holds its position)
    carried = [[0, 5, 10, 3], [None, 5, None]]
    ctx, tgt = pack_index_sets(ctx_sets, [0, 1], 16), pack_index_sets(tgt_sets, [1, 0], 16)
    z_TD = torch.randn(ctx.rows_T.numel(), 12, requires_grad=True)
    mask_index_S = torch.tensor([0, 1])
    with torch.no_grad():
        change_TD = residual.forward_packed(z_TD, ctx, tgt, mask_index_S) - plain.forward_packed(z_TD, ctx, tgt,
                                                                                                mask_index_S)
    normed_TD = torch.nn.functional.layer_norm(z_TD.detach(), (12,))
    expected = []
    for s, positions in enumerate(carried):
        rows = {int(p): int(ctx.cu_seqlens[s]) + i for i, p in enumerate(ctx_sets[s])}
        expected += [normed_TD[rows[p]] if p is not None else torch.zeros(12) for p in positions]
    torch.testing.assert_close(change_TD, torch.stack(expected), **TOL)
    # the base is trained: the gradient reaches exactly the context rows that are carried forward
    # (through a random readout: a layer-normed row sums to a constant, so .sum() would have no gradient)
    (residual.carried_forward(z_TD, ctx, tgt) @ torch.randn(12)).sum().backward()
    carried_rows = {int(ctx.cu_seqlens[s]) + [int(p) for p in ctx_sets[s]].index(p)
                    for s, positions in enumerate(carried) for p in positions if p is not None}
    assert {i for i in range(z_TD.shape[0]) if z_TD.grad[i].abs().sum() > 0} == carried_rows


def test_sincos_3d_layout():
    pe = sincos_3d(16, grid_depth=2, grid_size=3)
    assert pe.shape == (18, 16)
    # token (t=1, h=2, w=0) is row 1*9 + 2*3 + 0; depth block = first 8 dims: [sin(t*w_i) | cos(t*w_i)]
    row = pe[1 * 9 + 2 * 3]
    omega = [1.0 / 10000 ** (i / 4) for i in range(4)]
    torch.testing.assert_close(row[:4], torch.tensor([math.sin(1 * w) for w in omega]))
    torch.testing.assert_close(row[8:10], torch.tensor([math.sin(2 * 1.0), math.sin(2 * 0.01)]))  # h: 4 dims
    torch.testing.assert_close(row[12:14], torch.tensor([0.0, 0.0]))   # w = 0
    assert sincos_3d(20, 2, 3, uniform_power=True).shape == (18, 20)    # 3 x 8 dims, cut to 20


def _scores(rope, q, k, pos_q, pos_k):
    cq, sq = rope.tables(torch.tensor([pos_q]))
    ck, sk = rope.tables(torch.tensor([pos_k]))
    return float((rope.apply(q, cq, sq) * rope.apply(k, ck, sk)).sum())


def test_rope_textbook_layout_is_relative_and_reference_layout_is_not():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 24), torch.randn(1, 1, 24)
    grid = (4, 6, 6)
    fixed, quirk = Rope3D(24, grid, reference_layout=False), Rope3D(24, grid, reference_layout=True)
    # shifting both tokens one column keeps the score with the textbook layout
    a = _scores(fixed, q, k, 1 * 36 + 2 * 6 + 1, 0 * 36 + 3 * 6 + 4)
    b = _scores(fixed, q, k, 1 * 36 + 2 * 6 + 2, 0 * 36 + 3 * 6 + 5)
    # a score is a dot product (it may cancel to ~0): the tolerance scales with |q| |k|
    assert a == pytest.approx(b, abs=1e-6 * float(q.norm() * k.norm()))
    a = _scores(quirk, q, k, 1 * 36 + 2 * 6 + 1, 0 * 36 + 3 * 6 + 4)
    b = _scores(quirk, q, k, 1 * 36 + 2 * 6 + 2, 0 * 36 + 3 * 6 + 5)
    assert abs(a - b) > 1e-3
    # the textbook layout is a rotation (keeps norms; the reference layout is not); the tail beyond
    # 3 axes x 6 dims is untouched
    r = Rope3D(20, grid, reference_layout=False)
    c, s = r.tables(torch.tensor([50]))
    x = torch.randn(1, 2, 20)
    y = r.apply(x, c, s)
    torch.testing.assert_close(y.norm(), x.norm())
    assert torch.equal(y[..., 18:], x[..., 18:]) and r.rotated == 18


@pytest.mark.parametrize("name,params_m", [("vit_large", 303.3), ("vit_huge", 630.8), ("vit_giant", 1011.6)])
def test_presets_have_the_reference_sizes(name, params_m):
    with torch.device("meta"):
        enc = VisionTransformer(img_size=224, patch_size=16, num_frames=16, tubelet_size=2, **VIT_SIZES[name])
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad) / 1e6
    assert n == pytest.approx(params_m, rel=0.01)


def test_bf16_autocast_forward():
    enc = tiny_vit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(torch.randn(2, 3, 4, 32, 32), masks=[torch.tensor([[0, 5, 9], [1, 2, 3]])])
    assert out.shape == (2, 3, 48) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="patch_size 7 does not divide img_size 32"):
        VisionTransformer(img_size=32, patch_size=7, num_frames=4)
    with pytest.raises(ValueError, match="tubelet_size 3 does not divide num_frames 4"):
        VisionTransformer(img_size=32, patch_size=8, num_frames=4, tubelet_size=3)
    with pytest.raises(ValueError, match=r"embed_dim 60 splits into odd blocks"):
        tiny_vit(embed_dim=60)
    with pytest.raises(ValueError, match=r"expected a 5-D input"):
        tiny_vit()(torch.randn(2, 3, 32, 32))


def _conv_tokens(conv, x):
    """The strided conv itself on conv's parameters: [B, N, D]."""
    conv_fn = F.conv3d if conv.weight.dim() == 5 else F.conv2d
    return conv_fn(x, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)


def _sum_bound(conv, x):
    """Per output, fp32 rounding bound of a K-term dot product: K * eps * sum |x| |w|."""
    k = conv.weight[0].numel()
    conv_fn = F.conv3d if conv.weight.dim() == 5 else F.conv2d
    mag = conv_fn(x.abs(), conv.weight.abs(), stride=conv.stride)
    return (k * torch.finfo(torch.float32).eps * mag).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("video", [False, True])
def test_embedded_tokens_and_the_residual_stream_are_row_major(video):
    # A conv's [B, D, N] output transposed to [B, N, D] is a strided view; kept, every residual add would
    # carry that layout and every LayerNorm would copy it back. Values are the conv's, positions added.
    enc = tiny_vit(num_frames=4 if video else 1)
    x = torch.randn(2, 3, 4, 32, 32) if video else torch.randn(2, 3, 32, 32)
    x_BND = enc.embed(x)
    assert x_BND.is_contiguous()
    want = _conv_tokens(enc.patch_embed.proj, x) + enc.pos_embed
    assert ((x_BND - want).abs() <= _sum_bound(enc.patch_embed.proj, x) + 1e-7).all()
    assert enc.forward_dense(x_BND).is_contiguous()


@pytest.mark.parametrize("shape,tubelet", [((3, 3, 7, 37, 45), 2), ((2, 3, 4, 32, 32), 2), ((1, 3, 3, 9, 8), 3),
                                           ((4, 3, 35, 29), None), ((2, 3, 8, 8), None)])
def test_patch_embed_gemm_equals_the_strided_conv_values_and_gradients(shape, tubelet):
    # The patch embedding runs the strided conv as one GEMM over the patches: the conv's values (odd sizes
    # cropped to whole patches as the conv does), its input and weight gradients, on a non-contiguous input;
    # the GEMM runs in the conv module's own forward (ZeRO-3 gathers a leaf module's parameters there).
    from engine.models.layers import PatchEmbed
    torch.manual_seed(0)
    pe = PatchEmbed(8 if tubelet != 3 else 4, 24, 3, tubelet)
    assert isinstance(pe.proj, torch.nn.Conv3d if tubelet else torch.nn.Conv2d)
    calls = []
    pe.proj.register_forward_pre_hook(lambda mod, args: calls.append(1))
    x = torch.randn(*shape[:1], *shape[2:], shape[1]).movedim(-1, 1).requires_grad_()   # channels-last view
    assert not x.is_contiguous()
    out = pe(x)
    want = _conv_tokens(pe.proj, x)
    assert calls == [1] and out.shape == want.shape and out.is_contiguous()
    assert ((out - want).abs() <= _sum_bound(pe.proj, x.detach()) + 1e-7).all()
    g = torch.randn_like(out)
    dx, dw, db = torch.autograd.grad(out, (x, pe.proj.weight, pe.proj.bias), g)
    rx, rw, rb = torch.autograd.grad(want, (x, pe.proj.weight, pe.proj.bias), g)
    n_tok = out.shape[0] * out.shape[1]
    eps = torch.finfo(torch.float32).eps
    # weight gradient: a sum over every token; input gradient: a sum over the D outputs
    assert ((dw - rw).abs() <= n_tok * eps * torch.einsum("bnd,bnk->dk", g.abs(), _patches(pe, x.detach().abs()))
            .reshape(rw.shape) + 1e-7).all()
    assert ((dx - rx).abs() <= out.shape[-1] * eps * g.abs().sum((0, 1)).max() * pe.proj.weight.abs().max() + 1e-7).all()
    torch.testing.assert_close(db, rb, rtol=n_tok * eps, atol=n_tok * eps * g.abs().max())


def _patches(pe, x):
    """[B, N, C*k] patches of x in the conv weight's (C, t, p, p) order, by unfold (independent of PatchEmbed)."""
    k = pe.proj.kernel_size
    if len(k) == 2:
        return F.unfold(x, k, stride=k).transpose(1, 2)
    B, C, T = x.shape[:3]
    t = k[0]
    frames = [F.unfold(x[:, :, i * t:(i + 1) * t].flatten(1, 2), k[1:], stride=k[1:]) for i in range(T // t)]
    return torch.cat(frames, 2).transpose(1, 2)


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (0, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_gelu_linear_matches_autograd_through_gelu_and_linear(shape, bias):
    from engine.models.layers import GeluLinear
    torch.manual_seed(0)
    lin = GeluLinear(5, 3, bias=bias)
    h = (torch.randn(*shape) * 3).requires_grad_()       # both GELU tails and its middle
    g = torch.randn(*shape[:-1], 3)
    out = lin(h)
    (out * g).sum().backward()
    h2 = h.detach().clone().requires_grad_()
    w2 = lin.weight.detach().clone().requires_grad_()
    b2 = lin.bias.detach().clone().requires_grad_() if bias else None
    # the same product as the layer's own (kernels.linear: the C++ loop on AVX-512, else F.linear), so the
    # output is bit for bit the composition; kernels.linear itself is held to fp64 in test_linear.py
    want = kernels.linear(torch.nn.functional.gelu(h2), w2, b2)
    (want * g).sum().backward()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lin.weight.grad, w2.grad, rtol=1e-6, atol=1e-6)
    if bias:
        torch.testing.assert_close(lin.bias.grad, b2.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 24), (2, 5, 24), (0, 24)])
def test_gelu_linear_under_cpu_bf16_autocast_matches_the_plain_ops_and_saves_less(shape):
    # Under autocast the product runs in bf16 as F.linear would (weight and bias cast), the gradients come
    # back in each input's dtype (fp32 parameters, bf16 activations), and only h is kept, not gelu(h).
    from engine.models.layers import GeluLinear
    torch.manual_seed(0)
    lin = GeluLinear(24, 16)
    lin2 = torch.nn.Linear(24, 16)
    lin2.load_state_dict(lin.state_dict())
    h0 = torch.randn(*shape) * 3
    g = torch.randn(*shape[:-1], 16).bfloat16()
    outs, saved = [], []
    for layer in (lin, lin2):
        h = h0.bfloat16().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((len(outs), t.numel())) or t,
                                                      lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = layer(h) if layer is lin else layer(F.gelu(h))
        (out.float() * g.float()).sum().backward()
        outs.append((out, h.grad, layer.weight.grad, layer.bias.grad))
    (o1, dh1, dw1, db1), (o2, dh2, dw2, db2) = outs
    assert o1.dtype == o2.dtype == torch.bfloat16 and torch.equal(o1, o2)
    assert dh1.dtype == torch.bfloat16 and dw1.dtype == db1.dtype == torch.float32
    for a, b in ((dh1, dh2), (dw1, dw2), (db1, db2)):
        scale = b.float().abs().max().item() if b.numel() else 0.0
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2 * scale)
    act = shape[0] * (shape[1] if len(shape) == 3 else 1) * 24       # elements of h (and of gelu(h))
    kept = {i: sum(n for j, n in saved if j == i) for i in (0, 1)}
    assert kept[1] - kept[0] >= act     # the plain ops also keep gelu(h)


def test_gelu_linear_gradcheck_on_a_non_contiguous_input():
    from engine.models.layers import _GeluLinearFn
    torch.manual_seed(0)
    h = torch.randn(4, 6, dtype=torch.float64).t().requires_grad_()   # [6, 4], column-major
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)   # a residual stream added to the output
    assert not h.is_contiguous()
    assert torch.autograd.gradcheck(_GeluLinearFn.apply, (h, w, b, None))
    assert torch.autograd.gradcheck(_GeluLinearFn.apply, (h, w, b, r))


def test_mlp_keeps_the_reference_parameter_names_and_saves_less():
    from engine.models.layers import MLP
    mlp = MLP(8, 32)
    assert sorted(n for n, _ in mlp.named_parameters()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        mlp(torch.randn(10, 8, requires_grad=True)).sum().backward()
    # fc1: its input and weight; fc2: h and its weight; no separate copy of gelu(h)
    assert sum(n for n in saved if n == 10 * 32) == 10 * 32


@pytest.mark.parametrize("kind", ["gelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_without_gradients_runs_its_activation_in_place_and_equals_the_plain_ops(kind, dtype):
    # The target encoder's pass: fc1's output is the MLP's own, so the activation overwrites it; the
    # result equals the out-of-place ops bit for bit and the caller's input is left alone.
    from engine.models.layers import MLP, SwiGLU
    torch.manual_seed(0)
    mlp = (MLP(8, 32) if kind == "gelu" else SwiGLU(8, 32)).to(dtype)
    x = (torch.randn(3, 10, 8) * 3).to(dtype)
    x0 = x.clone()
    calls = []
    op = torch.ops.aten.gelu_.default if kind == "gelu" else torch.ops.aten.silu_.default

    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func)
            return func(*args, **(kwargs or {}))

    with Seen():   # the same products as below: under a dispatch mode kernels.linear is F.linear
        if kind == "gelu":
            want = F.linear(F.gelu(mlp.fc1(x)), mlp.fc2.weight, mlp.fc2.bias)
        else:
            want = mlp.fc3(F.silu(mlp.fc1(x)) * mlp.fc2(x))

    with torch.no_grad(), Seen():
        got = mlp(x)
    assert op in calls, calls
    assert torch.equal(got, want) and torch.equal(x, x0)
    with Seen():   # with gradients nothing is overwritten
        calls.clear()
        mlp(x.requires_grad_())
    assert op not in calls


@pytest.mark.parametrize("autocast", [True, False])
def test_cpu_bf16_packed_rows_are_padded_to_a_multiple_and_dropped(monkeypatch, autocast):
    # Under CPU bf16 the packed encoder's and predictor's blocks, and the predictor's embedding and
    # projection, run on a row count rounded up to CPU_BF16_ROW_MULTIPLE (zero rows, so oneDNN meets few
    # GEMM shapes); the real rows' outputs and every gradient equal the unpadded pass's within bf16 rounding.
    import engine.packing as packing
    enc = tiny_vit().train()
    pred = Predictor(enc.grid, 48, predictor_embed_dim=32, depth=2, num_heads=2, num_mask_tokens=1,
                     zero_init_mask_tokens=False)
    if not autocast:
        enc, pred = enc.bfloat16(), pred.bfloat16()
    N = enc.num_patches
    ctx = ragged_sets(N, [5, 23, 11], seed=3)
    tgt = [torch.tensor(sorted(set(range(N)) - set(c.tolist()))[:9]) for c in ctx]
    pc, pt = pack_index_sets(ctx, [0, 1, 2], N), pack_index_sets(tgt, [0, 1, 2], N)
    x = torch.randn(3, 3, 4, 32, 32, dtype=torch.float32 if autocast else torch.bfloat16)
    rows = []
    hooks = [m.blocks[0].register_forward_pre_hook(lambda mod, a: rows.append(a[0].shape[0]))
             for m in (enc,)] + [pred.predictor_blocks[0].register_forward_pre_hook(
                 lambda mod, a: rows.append(a[0].shape[0]))] + [
             m.register_forward_pre_hook(lambda mod, a: rows.append(a[0].shape[0]))
             for m in (pred.predictor_embed, pred.predictor_proj)]

    def run():
        enc.zero_grad(set_to_none=True)
        pred.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            p = pred.forward_packed(enc.forward_packed(enc.embed(x), pc), pc, pt, torch.zeros(3, dtype=torch.long))
        p.float().square().sum().backward()
        grads = [q.grad.float().clone() for q in [*enc.parameters(), *pred.parameters()] if q.grad is not None]
        return p.float().detach(), grads

    out, grads = run()
    assert rows == [64, 64, 128, 64]    # 39 context rows: blocks, embed; 39 + 27 predictor rows; 27 out
    monkeypatch.setattr(packing, "CPU_BF16_ROW_MULTIPLE", 1)
    rows.clear()
    ref, ref_grads = run()
    assert rows == [39, 39, 66, 27]
    for h in hooks:
        h.remove()
    assert out.shape == ref.shape == (27, 48)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2 * ref.abs().max().item())
    assert len(grads) == len(ref_grads) > 10
    for a, b in zip(grads, ref_grads):
        if b.dim() >= 2:    # weight matrices; biases and norms are signed sums that bf16 rounds (all below)
            torch.testing.assert_close(a, b, rtol=0, atol=3e-2 * b.abs().max().item())
    a, b = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads])
    assert F.cosine_similarity(a, b, dim=0) > 0.999


def test_fp32_packed_rows_are_not_padded():
    enc = tiny_vit()
    rows = []
    enc.blocks[0].register_forward_pre_hook(lambda mod, a: rows.append(a[0].shape[0]))
    sets = ragged_sets(enc.num_patches, [5, 23])
    with torch.no_grad():
        enc.forward_packed(enc.embed(torch.randn(2, 3, 4, 32, 32)), pack_index_sets(sets, [0, 1], enc.num_patches))
    assert rows == [28]


def _block_grads(blk, x, tok, g, wrap=None):
    x = x.detach().clone().requires_grad_()
    blk.zero_grad(set_to_none=True)
    out = wrap(blk, x, tok) if wrap else blk(x, tok)
    (out * g).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in blk.parameters()]


def _tokens(packed: bool):
    from engine.models.layers import Tokens
    if packed:   # three ragged sequences of 5, 1 and 11 rows
        return torch.randn(17, 24), Tokens(torch.arange(17), cu_seqlens=torch.tensor([0, 5, 6, 17], dtype=torch.int32),
                                           max_seqlen=11)
    return torch.randn(2, 13, 24), Tokens(torch.arange(13).expand(2, -1))


def _block_case(packed: bool):
    """A seeded Block(24, 3), its input x, tokens and an output gradient g."""
    from engine.models.layers import Block
    torch.manual_seed(0)
    blk = Block(24, 3)
    x, tok = _tokens(packed)
    return blk, x, tok, torch.randn_like(x)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_block_recomputing_its_norms_gives_the_plain_gradients_bit_for_bit(packed, autocast):
    # The norms' outputs are dropped from what the next linear layers save and recomputed by calling the
    # norm again in the backward: the same values, so the same gradients to the bit (fp32 and CPU bf16).
    blk, x, tok, g = _block_case(packed)
    runs = []
    for recompute in (False, True):
        blk.recompute_norms = recompute
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            runs.append(_block_grads(blk, x, tok, g))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_block_adds_its_residuals_in_the_projections_as_separate_adds_would(packed, autocast, grad):
    # x + attn(norm1(x)) and x + mlp(norm2(x)): the block hands x to the projections, which add it as they
    # store their rows; outputs and gradients are those of the two separate adds, to the bit

    def separate_adds(blk, x, tok):
        y = x + blk.attn(blk.norm1(x), tok)
        return y + blk.mlp(blk.norm2(y))

    blk, x, tok, g = _block_case(packed)
    blk.recompute_norms = False   # the plain autograd of the composition above
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if grad:
            runs = [_block_grads(blk, x, tok, g), _block_grads(blk, x, tok, g, wrap=separate_adds)]
        else:
            with torch.no_grad():
                runs = [[blk(x.clone(), tok)], [separate_adds(blk, x.clone(), tok)]]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True])
def test_split_qkv_takes_the_attention_gradients_buffer_as_the_projections_gradient(packed, monkeypatch):
    # The packed attention's backward lays dq, dk, dv out as the slices of one [T, 3, H, Dh] buffer: that
    # buffer is the qkv projection's gradient as it stands (no stack). Same gradients, to the bit, as unbind.
    from engine.models import layers
    blk, x, tok, g = _block_case(packed)
    seen = []
    slices_of_one = layers._slices_of_one
    monkeypatch.setattr(layers, "_slices_of_one", lambda *a: seen.append(slices_of_one(*a)) or seen[-1])
    fused = _block_grads(blk, x, tok, g)
    monkeypatch.setattr(layers, "split_qkv", lambda t, h: t.unflatten(-1, (3, h, t.shape[-1] // 3 // h)).unbind(-3))
    plain = _block_grads(blk, x, tok, g)
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)
    assert seen == [packed]   # the packed kernel's buffer is taken whole; the dense path's grads are stacked


def test_split_qkv_stacks_gradients_that_are_not_one_buffer():
    from engine.models.layers import _slices_of_one, split_qkv
    qkv = torch.randn(5, 18, requires_grad=True)
    q, k, v = split_qkv(qkv, 2)
    assert q.shape == (5, 2, 3) and torch.equal(v, qkv[:, 12:].view(5, 2, 3))
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()   # three separate gradients
    assert torch.equal(qkv.grad, torch.tensor([1.0] * 6 + [2.0] * 6 + [3.0] * 6).expand(5, -1))
    buf = torch.randn(5, 3, 2, 3)
    assert _slices_of_one(buf[:, 0], buf[:, 1], buf[:, 2], 6)
    assert not _slices_of_one(buf[:, 0], buf[:, 2], buf[:, 1], 6)   # out of order
    other = torch.randn(5, 3, 2, 3)
    assert not _slices_of_one(buf[:, 0], other[:, 1], buf[:, 2], 6)   # another storage
    wide = torch.randn(5, 4, 2, 3)                                    # rows of 4 slices, not 3
    assert not _slices_of_one(wide[:, 0], wide[:, 1], wide[:, 2], 6)


def test_block_drops_its_norm_outputs_from_the_saved_tensors():
    # Without recomputing, the graph keeps both norms' outputs alive after the forward; with it, nothing does.
    from engine.models.layers import Block
    torch.manual_seed(0)
    blk = Block(24, 3)
    x, tok = _tokens(False)
    for recompute, alive in ((False, 2), (True, 0)):
        blk.recompute_norms = recompute
        refs = []
        hooks = [n.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o))) for n in (blk.norm1, blk.norm2)]
        out = blk(x.clone().requires_grad_(), tok)
        for h in hooks:
            h.remove()
        assert sum(r() is not None for r in refs) == alive
        out.sum().backward()


def test_block_leaves_saved_tensors_to_hooks_already_set():
    # Under activation checkpointing or save_on_cpu (saved-tensor hooks set outside the block) the block sets
    # none of its own, so those hooks see every saved tensor, the norms' outputs included; same gradients.
    from torch.utils.checkpoint import checkpoint
    from engine.models.layers import Block
    torch.manual_seed(0)
    blk = Block(24, 3)
    x, tok = _tokens(False)
    g = torch.randn_like(x)
    want = _block_grads(blk, x, tok, g)
    for a, b in zip(want, _block_grads(blk, x, tok, g, wrap=lambda m, x, t: checkpoint(m, x, t, use_reentrant=False))):
        assert torch.equal(a, b)
    seen, norm_outs = [], []
    hooks = [n.register_forward_hook(lambda m, i, o: norm_outs.append(o.untyped_storage().data_ptr()))
             for n in (blk.norm1, blk.norm2)]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.untyped_storage().data_ptr()) or t,
                                                  lambda t: t):
        out = blk(x.clone().requires_grad_(), tok)
    for h in hooks:
        h.remove()
    assert len(norm_outs) == 2 and all(p in seen for p in norm_outs)
    out.sum().backward()


def test_block_on_an_empty_packed_batch_keeps_plain_autograd():
    # No rows: no storage address to tell the norm's output by, so the block runs plain autograd (the
    # gradients are zeros of the parameters' shapes).
    from engine.models.layers import Block, Tokens
    torch.manual_seed(0)
    blk = Block(24, 3)
    x = torch.zeros(0, 24, requires_grad=True)
    out = blk(x, Tokens(torch.arange(0), cu_seqlens=torch.zeros(1, dtype=torch.int32), max_seqlen=0))
    out.sum().backward()
    assert out.shape == (0, 24) and x.grad.shape == (0, 24)
    assert torch.equal(blk.attn.qkv.weight.grad, torch.zeros_like(blk.attn.qkv.weight))
