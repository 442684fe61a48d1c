"""engine.core.beside: the side half runs on another thread with its share of the threads, joins with its
value or its error, gives the threads back, and stays inline wherever a second thread would lose state."""
import multiprocessing
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import engine.jepa as jepa_mod
from engine.core.beside import Beside, beside_ok
from tests.engine.test_jepa import tiny_models  # noqa: F401  (a fixture)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _where():
    return threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()


def test_side_half_runs_on_another_thread_with_its_share(two_threads):
    with Beside(_where, enabled=True) as side:
        here = _where()
    ident, threads, grad = side.result
    assert ident != threading.get_ident() and threads == 1 and not grad
    assert here[1] == 1 and here[2]         # this thread keeps the other share, grad mode untouched
    assert torch.get_num_threads() == 2     # and gets its threads back


def test_odd_thread_counts_split_with_the_rest_here():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with Beside(_where, enabled=True) as side:
            here = torch.get_num_threads()
        assert (side.result[1], here, torch.get_num_threads()) == (1, 2, 3)
    finally:
        torch.set_num_threads(before)


def test_disabled_runs_inline_first_without_grad(two_threads):
    order = []
    with Beside(lambda: order.append("side") or _where(), enabled=False) as side:
        order.append("here")
    assert order == ["side", "here"]
    assert side.result == (threading.get_ident(), 2, False)


def test_side_error_is_raised_here_and_threads_come_back(two_threads):
    with pytest.raises(ZeroDivisionError):
        with Beside(lambda: 1 / 0, enabled=True):
            pass
    assert torch.get_num_threads() == 2
    with Beside(lambda: 7, enabled=True) as side:   # the side thread survives its job's error
        pass
    assert side.result == 7


def test_an_error_here_waits_for_the_side_half(two_threads):
    finished = threading.Event()

    def slow():
        time.sleep(0.2)
        finished.set()

    with pytest.raises(KeyError):
        with Beside(slow, enabled=True):
            raise KeyError("here")
    assert finished.is_set() and torch.get_num_threads() == 2


def test_parts_are_shared_by_both_threads_and_combined_in_order(two_threads):
    """Once the body is done this thread takes the parts left, on the side thread's share of threads."""
    def part(i):
        time.sleep(0.05)
        return i, threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()

    with Beside([lambda i=i: part(i) for i in range(8)], enabled=True, combine=list) as side:
        pass
    order, who, threads, grad = zip(*side.result)
    assert order == tuple(range(8))
    assert threading.get_ident() in who and len(set(who)) == 2   # both took parts
    assert set(threads) == {1} and not any(grad)
    assert torch.get_num_threads() == 2


def test_parts_inline_when_disabled(two_threads):
    with Beside([lambda i=i: (i, threading.get_ident()) for i in range(3)], enabled=False,
                combine=lambda v: v[::-1]) as side:
        pass
    assert side.result == [(2, threading.get_ident()), (1, threading.get_ident()), (0, threading.get_ident())]


def test_an_error_here_is_raised_as_it_is_with_parts_left(two_threads):
    # the parts this thread would have taken stay undone: nothing is combined, the body's error goes on
    with pytest.raises(KeyError, match="here"):
        with Beside([lambda: time.sleep(0.05)] * 4, enabled=True, combine=lambda v: [x + 1 for x in v]):
            raise KeyError("here")
    assert torch.get_num_threads() == 2


def test_a_failing_part_stops_the_rest_and_is_raised_here(two_threads):
    ran = []

    def part(i):
        ran.append(i)
        time.sleep(0.02)
        if i == 2:
            raise ValueError("part 2")
        return i

    with pytest.raises(ValueError, match="part 2"):
        with Beside([lambda i=i: part(i) for i in range(40)], enabled=True, combine=list):
            pass
    assert 2 in ran and len(ran) < 40 and torch.get_num_threads() == 2


def test_beside_ok_says_no_where_state_would_be_lost(two_threads):
    lin = torch.nn.Linear(4, 4)
    x = torch.zeros(2, 4)
    assert beside_ok(x, lin)
    assert not beside_ok(torch.zeros(2, 4, device="meta"), lin)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not beside_ok(x, lin)
    with torch.inference_mode():
        assert not beside_ok(x, lin)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):
        assert not beside_ok(x, lin)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert not beside_ok(x, lin)
    torch.set_num_threads(1)
    assert not beside_ok(x, lin)
    torch.set_num_threads(2)
    compiled = torch.nn.Sequential(torch.nn.Linear(4, 4))
    compiled[0].compile()                   # marks the block; nothing is compiled until it is called
    assert not beside_ok(x, compiled)
    zero3 = torch.nn.Linear(4, 4)
    zero3.weight.ds_tensor = torch.zeros(2)  # the local shard DeepSpeed ZeRO-3 gives a partitioned parameter
    assert not beside_ok(x, zero3)
    assert beside_ok(x, lin)


def test_a_split_inside_a_side_job_runs_inline():
    """With four threads the side job has two, enough to split again: it must not queue a job behind
    itself on its own thread."""
    x, lin = torch.zeros(2, 4), torch.nn.Linear(4, 4)

    def outer():
        with Beside(_where, enabled=beside_ok(x, lin)) as inner:
            pass
        return inner.result[0] == threading.get_ident()

    result = []

    # In a thread of its own (thread counts are per thread) with a bounded join, so a split that waits on
    # its own thread fails this test instead of hanging it.
    def run():
        torch.set_num_threads(4)
        with Beside(outer, enabled=beside_ok(x, lin)) as side:
            pass
        result.append(side.result)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert result == [True], "a split inside a side job waited on its own thread"


def _in_child(q):
    with Beside(_where, enabled=True) as side:
        pass
    q.put(side.result[0] != threading.get_ident())


def test_a_forked_child_gets_its_own_side_thread(two_threads):
    with Beside(lambda: None, enabled=True):   # the parent's side thread exists before the fork
        pass
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_in_child, args=(q,))
    p.start()
    try:
        assert q.get(timeout=60) is True
    finally:
        p.join(timeout=60)
    assert p.exitcode == 0


@pytest.fixture(scope="module")
def tiny_jepa(tiny_models):
    cfg, enc, pred = tiny_models
    model = jepa_mod.JEPA(enc, pred)
    with torch.no_grad():   # an encoder unlike its target, so a pass of one in place of the other shows
        for p in model.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return cfg, model


def test_target_parts_halve_down_to_a_floor_of_tokens():
    for B, tokens in [(8, 256), (16, 64), (3, 256), (1, 64), (64, 256), (5, 1000), (7, 3)]:
        parts = jepa_mod.target_parts(B, tokens)
        floor = -(-jepa_mod.MIN_PART_TOKENS // tokens)
        assert sum(parts) == B and parts == sorted(parts, reverse=True)
        assert all(p >= min(floor, B - sum(parts[:i])) for i, p in enumerate(parts))
        assert parts[0] <= max(B // 2, floor) or len(parts) == 1
    assert jepa_mod.target_parts(8, 256) == [4, 2, 1, 1] and jepa_mod.target_parts(16, 64) == [8, 4, 4]


def _loss_and_grads(model, x, masks):
    model.zero_grad(set_to_none=True)
    loss, _ = model(x, masks)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_jepa_step_beside_equals_inline(tiny_jepa, two_threads, monkeypatch):
    """The step with the target pass on the side thread (in parts) equals the sequential one (loss and
    every gradient), and the target pass really ran there."""
    cfg, model = tiny_jepa
    g = torch.Generator().manual_seed(3)
    B, N = 3, model.encoder.num_patches
    x = torch.randn(B, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size, generator=g)
    ctx, tgt = [], []
    for k in range(2):   # ragged: each sample its own context and target sizes
        perms = [torch.randperm(N, generator=g) for _ in range(B)]
        ctx.append([p[:30 + 7 * b + k].sort().values for b, p in enumerate(perms)])
        tgt.append([p[60:90 - 5 * b].sort().values for b, p in enumerate(perms)])
    masks = SimpleNamespace(ctx=ctx, tgt=tgt, pairs=[(0, 0), (1, 1)], mask_index=[0, 1])

    threads = []
    hook = model.target_encoder.norm.register_forward_pre_hook(lambda m, a: threads.append(threading.get_ident()))
    try:
        monkeypatch.setattr(jepa_mod, "beside_ok", lambda x, m: False)
        loss_a, grads_a = _loss_and_grads(model, x, masks)
        monkeypatch.setattr(jepa_mod, "beside_ok", beside_ok)
        loss_b, grads_b = _loss_and_grads(model, x, masks)
    finally:
        hook.remove()
    here = threading.get_ident()
    # inline: one pass; beside: its parts, the first (at least) on the side thread
    parts = jepa_mod.target_parts(B, N)
    assert len(parts) > 1 and len(threads) == 1 + len(parts)
    assert threads[0] == here and any(t != here for t in threads[1:])
    # the two runs differ only in how many threads each GEMM split over: float rounding
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5 * float(ga.abs().max()))
