"""The latent cache (engine.data.latents, built by engine.datagen.latents): the frozen encoder's latents of
every frame, read in place of decoding and encoding; a cached run trains as the decoding run does."""
import csv
import json

import numpy as np
import pytest
import torch

from engine.config import ConfigError, load_config
from engine.builders import build_frozen_frame_step, build_latent_cache
from engine.data.latents import LatentCache, LatentCacheError, fingerprint_difference
from engine.datagen.synthetic import generate_events
from engine.train import main as train_main

CONFIG = "configs/ac_lattice_tiny_cpu.yaml"   # an unconditioned world model on a frozen random encoder


@pytest.fixture(scope="module")
def lattice(tmp_path_factory):
    """6 lattice videos (16 frames of 96 px) and an index that also lists a file that does not decode."""
    d = tmp_path_factory.mktemp("lattice")
    good = generate_events(d / "ev", 3, size=96, world="lattice", cell=16, blocks=1, seed=3)
    bad = d / "broken.mp4"
    bad.write_bytes(b"not a video")
    with_bad = d / "with_bad.csv"
    with_bad.write_text(good.read_text() + f"{bad} 0\n")
    return {"csv": good, "with_bad": with_bad, "bad": str(bad)}


def overrides(csv_path, **more):
    kw = {"data.datasets": f"[{csv_path}]", "meta.dtype": "float32", "data.batch_size": "2",
          "data.num_workers": "0", "data.dataset_fpcs": "[4]", "model.depth": "2", "model.pred_depth": "1"}
    kw.update(more)
    return [f"{k}={v}" for k, v in kw.items()]


@pytest.fixture(scope="module")
def cache(lattice, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "lat"
    summary = build_latent_cache(load_config(CONFIG, overrides(lattice["with_bad"])), out)
    return {"dir": out, "summary": summary}


def test_the_cache_holds_every_frame_in_both_orientations_and_lists_what_did_not_decode(lattice, cache):
    s = cache["summary"]
    assert s["videos"] == 6 and s["skipped"] == 1 and s["flips"] == 2 and s["frames"] == 6 * 16
    c = LatentCache(cache["dir"])
    assert c.skipped == [lattice["bad"]] and (c.tokens, c.dim) == (36, 192)
    with pytest.raises(ValueError, match="did not decode when the cache was built"):
        c.entry(lattice["bad"])


def test_a_cached_sample_is_the_encoders_latents_of_the_clip_the_frame_set_decodes(lattice, cache):
    """Same index, same per-sample seed: the same frames, the same flip, the latents `encode` gives them."""
    from engine.builders import build_dataset
    cfg = load_config(CONFIG, overrides(lattice["csv"], **{"data.latent_cache": str(cache["dir"])}))
    frames, latents = build_dataset(cfg, train=True, frames=True), build_dataset(cfg, train=True)
    model = build_frozen_frame_step(cfg)
    flips = set()
    for index, seed in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (0, 7), (2, 8)]:
        x_3THW, label = frames[(index, seed)]
        z_TND, label_z = latents[(index, seed)]
        assert label == label_z and z_TND.shape == (4, 36, 192) and z_TND.dtype == torch.float32
        with torch.no_grad():
            want = model.encode(x_3THW[None]).reshape(4, 36, 192)
        torch.testing.assert_close(z_TND, want, rtol=1e-5, atol=1e-5)
        rng = np.random.default_rng(seed)   # the draws both sets make: the clip's frames, then crop and flip
        entry = latents.cache.entry(frames.paths[index])
        idx = frames.sample_indices(entry, rng)[0]
        flip = frames.transform.plan(96, 96, rng)[1]
        assert torch.equal(z_TND, latents.cache.frames(entry, idx, flip))
        flips.add(flip)
    assert flips == {True, False}   # both orientations were read


def _losses(run):
    return [(float(r["loss"]), float(r["loss_tf"]), float(r["loss_rollout"]))
            for r in csv.DictReader(open(run / "metrics.csv"))]


def _cache_and_train_both_ways(config, sets: dict, tmp_path, steps: int) -> dict:
    """Build a cache for config + sets with the command line, then train `steps` steps decoding and on the
    cache: {"frames": losses, "latents": losses}."""
    from engine.datagen.__main__ import main as datagen
    datagen(["latents", "--config", config, "--output", str(tmp_path / "cache")]
            + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
    losses = {}
    for name, extra in (("frames", {}), ("latents", {"data.latent_cache": str(tmp_path / "cache")})):
        args = ["--config", config, "--output", str(tmp_path / name), "--max-steps", str(steps), "--no-progress"]
        for k, v in {**sets, **extra}.items():
            args += ["--set", f"{k}={v}"]
        train_main(args)
        losses[name] = _losses(tmp_path / name)
    return losses


def test_a_cached_run_trains_as_the_run_that_decodes(lattice, cache, tmp_path):
    """Four steps from the same seed: the same clips, flips and latents, so the same losses (float rounding
    apart: the cache encoded each video in one call, the step its batch's frames)."""
    runs = {}
    for name, extra in (("frames", {}), ("latents", {"data.latent_cache": str(cache["dir"])})):
        args = ["--config", CONFIG, "--output", str(tmp_path / name), "--max-steps", "4", "--no-progress"]
        for o in overrides(lattice["with_bad"], **extra):
            args += ["--set", o]
        summary = train_main(args)
        assert summary["steps"] == 4
        runs[name] = _losses(tmp_path / name)
    np.testing.assert_allclose(runs["latents"], runs["frames"], rtol=1e-5, atol=1e-7)
    assert len({r[0] for r in runs["frames"]}) == 4   # four different batches, not one repeated


def test_a_stale_or_broken_cache_is_refused_by_name(lattice, cache, tmp_path, capsys):
    def train(cache_dir, *more):
        args = ["--config", CONFIG, "--output", str(tmp_path / "run"), "--max-steps", "1", "--no-progress",
                "--overwrite"]
        for o in overrides(lattice["csv"], **{"data.latent_cache": str(cache_dir)}) + list(more):
            args += ["--set", o]
        with pytest.raises(SystemExit) as e:
            train_main(args)
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "another checkpoint or seed" in train("%s" % cache["dir"], "meta.seed=1")   # another random encoder
    assert "dtype: 'float32' against 'bfloat16'" in train(cache["dir"], "meta.dtype=bfloat16")
    assert "no latent cache there" in train(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text((cache["dir"] / "index.json").read_text())
    (broken / "latents.bin").write_bytes((cache["dir"] / "latents.bin").read_bytes()[:1000])
    assert "incomplete or damaged" in train(broken)
    (broken / "index.json").write_text('{"version": 1, "videos": []}')
    assert "not a latent cache index (KeyError" in train(broken)
    more = tmp_path / "more.csv"   # a video added to the index since the cache was built
    more.write_text(lattice["csv"].read_text() + f"{tmp_path / 'new.mp4'} 0\n")
    assert "1 of the videos data.datasets lists are not in it" in train(cache["dir"], f"data.datasets=[{more}]")


def test_configs_that_cannot_use_a_cache_are_refused_by_key(lattice, tmp_path):
    with pytest.raises(ConfigError, match=r"data_aug.random_resize_scale is \[0.3, 1.0\]"):
        load_config(CONFIG, overrides(lattice["csv"], **{"data.latent_cache": "x",
                                                         "data_aug.random_resize_scale": "[0.3, 1.0]"}))
    with pytest.raises(ConfigError, match="data_aug.motion_shift"):
        build_latent_cache(load_config(CONFIG, overrides(lattice["csv"], **{"data_aug.motion_shift": "true"})),
                           tmp_path / "c")
    with pytest.raises(ConfigError, match="data.latent_cache"):
        load_config("configs/tiny_cpu.yaml", ["data.latent_cache=somewhere"])   # V-JEPA: no frozen encoder
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda: this torch sees no CUDA device"):
            build_latent_cache(load_config(CONFIG, overrides(lattice["csv"])), tmp_path / "c", device="cuda")
    assert not (tmp_path / "c").exists()


def test_an_existing_cache_is_replaced_only_when_asked_and_bfloat16_storage_rounds(lattice, cache, tmp_path):
    cfg = load_config(CONFIG, overrides(lattice["csv"]))
    out = tmp_path / "c"
    build_latent_cache(cfg, out, "bfloat16")
    with pytest.raises(LatentCacheError, match="already exists; pass --overwrite"):
        build_latent_cache(cfg, out)
    half, full = LatentCache(out), LatentCache(cache["dir"])
    # the same frames (the broken video is not in this index), half the bytes
    assert half.dtype == "bfloat16" and (out / "latents.bin").stat().st_size * 2 == \
        (cache["dir"] / "latents.bin").stat().st_size
    path = next(iter(half.entries))
    idx = np.arange(16)
    for flip in (False, True):
        want = full.frames(full.entry(path), idx, flip)
        torch.testing.assert_close(half.frames(half.entry(path), idx, flip), want.bfloat16().float())
    build_latent_cache(cfg, out, "float32", overwrite=True, workers=2)   # decoded in two worker processes
    assert LatentCache(out).dtype == "float32"
    assert (out / "latents.bin").read_bytes() == (cache["dir"] / "latents.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]   # no temporaries left beside it
    assert fingerprint_difference(json.loads((out / "index.json").read_text())["fingerprint"], full.fingerprint) \
        is None


def test_arm_trajectories_read_their_actions_and_states_beside_the_cached_latents(tmp_path):
    """The action-conditioned step (configs/ac_arm_tiny_cpu.yaml, whole unflipped frames): two steps cached
    and decoded give the same losses, so the actions and states follow the cached clips' frames."""
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.datagen.__main__ import main as datagen
    datagen(["robot", "--output", str(tmp_path / "arm"), "--num", "3", "--frames", "12", "--size", "32",
             "--policies", "explore"])
    sets = {"data.datasets": f"[{tmp_path / 'arm' / 'robot.csv'}]", "data.crop_size": "32", "data.batch_size": "2",
            "data.num_workers": "0", "model.pred_depth": "1", "data.sampling_rate": "2"}
    losses = _cache_and_train_both_ways("configs/ac_arm_tiny_cpu.yaml", sets, tmp_path, steps=3)
    assert LatentCache(tmp_path / "cache").flips == 1   # horizontal_flip off: one orientation kept
    np.testing.assert_allclose(losses["latents"], losses["frames"], rtol=1e-5, atol=1e-7)


def test_a_decoding_run_resumes_on_the_cache_and_continues_exactly(lattice, cache, tmp_path):
    """Switching the cache on at a resume is an accepted, recorded change: steps 2-3 are those of the run
    that decoded throughout."""
    def run(out, steps, *extra):
        args = ["--config", CONFIG, "--output", str(out), "--max-steps", str(steps), "--no-progress", *extra]
        for o in overrides(lattice["csv"]):
            args += ["--set", o]
        train_main(args)
        return _losses(out)

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "split", 2)
    split = run(tmp_path / "split", 4, "--resume", "--set", f"data.latent_cache={cache['dir']}")
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-7)
    assert "data.latent_cache" in (tmp_path / "split" / "config_history.yaml").read_text()


def test_hjepa_level_one_reads_the_cache(tmp_path):
    """H-JEPA's level 1 is the same frozen encoder: cached and decoded maze runs give the same losses, every
    level's (`configs/hjepa_tiny_cpu.yaml`; the metrics' loss columns are the trained levels' sums)."""
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.datagen.sources import generate_maze
    maze = generate_maze(tmp_path / "maze", 4, num_frames=14, size=32, seed=0)
    sets = {"data.datasets": f"[{maze}]", "data.batch_size": "2", "data.num_workers": "0"}
    losses = _cache_and_train_both_ways("configs/hjepa_tiny_cpu.yaml", sets, tmp_path, steps=3)
    np.testing.assert_allclose(losses["latents"], losses["frames"], rtol=1e-5, atol=1e-7)


def test_zero3_ranks_read_the_cache_as_they_decode(lattice, cache, tmp_path):
    """Two CPU ranks under DeepSpeed ZeRO-3 (torchrun): the encoder's fingerprint is taken before ZeRO
    partitions it, each rank reads its own samples' latents, and the losses are the decoding run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    losses = {}
    for name, extra in (("frames", {}), ("latents", {"data.latent_cache": str(cache["dir"])})):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "engine.train", "--config", CONFIG, "--output", str(tmp_path / name), "--max-steps", "2",
               "--no-progress", "--deepspeed", "configs/deepspeed/zero3.json"]
        for o in overrides(lattice["csv"], **extra):
            cmd += ["--set", o]
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        losses[name] = _losses(tmp_path / name)
    np.testing.assert_allclose(losses["latents"], losses["frames"], rtol=1e-5, atol=1e-7)


def _latents_command_on_rank(rank, argv):
    from engine.datagen.__main__ import main
    main(argv + [f"--local_rank={rank}"])   # as the deepspeed launcher appends it


def _all_latents(c: LatentCache) -> dict:
    return {p: [c.frames(e, np.arange(e.info.num_frames), flip) for flip in (False, True)]
            for p, e in c.entries.items()}


def test_two_ranks_each_write_a_share_and_make_the_one_process_cache(lattice, cache, tmp_path, capsys):
    """`python -m engine.datagen latents` under a launcher: rank r encodes videos r, r + 2, ... into its own
    file, rank 0 writes the index; the cache holds the latents one process writes, and trains alike."""
    from engine.runtime.launch import run_local
    out = tmp_path / "two"
    argv = ["latents", "--config", CONFIG, "--output", str(out)]
    for o in overrides(lattice["with_bad"]):
        argv += ["--set", o]
    run_local(_latents_command_on_rank, world_size=2, args=(argv,), timeout_s=600)
    two, one = LatentCache(out), LatentCache(cache["dir"])
    assert [name for name, _ in two.files] == ["latents-00000-of-00002.bin", "latents-00001-of-00002.bin"]
    assert sum(frames for _, frames in two.files) == 6 * 16 and {e.file for e in two.entries.values()} == {0, 1}
    assert set(two.entries) == set(one.entries) and two.skipped == one.skipped == [lattice["bad"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]   # nothing left beside it
    assert sorted(p.name for p in out.iterdir()) == ["index.json", *[name for name, _ in two.files]]
    a, b = _all_latents(two), _all_latents(one)
    for p in a:
        for x, y in zip(a[p], b[p]):
            assert x.abs().max() > 0
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=0, atol=1e-5 * float(y.abs().max()))


def _write_with_a_failing_rank(rank, csv_path, out):
    from engine.builders import build_dataset
    from engine.datagen.latents import write_latent_cache
    from engine.runtime.launch import init_distributed
    init_distributed()
    dataset = build_dataset(load_config(CONFIG, overrides(csv_path)), train=True, frames=True)

    def encode(u8_3TSS):
        if rank == 1:
            raise RuntimeError("out of memory on this rank's device")
        return torch.zeros(u8_3TSS.shape[1], 4, 8)

    try:
        write_latent_cache(dataset, encode, {}, out)
    except Exception as e:  # noqa: BLE001 -- the test reads what each rank raised
        return f"{type(e).__name__}: {e}"
    return None


def test_a_rank_that_fails_fails_every_rank_naming_it_and_leaves_nothing(lattice, tmp_path):
    from engine.runtime.launch import run_local
    r0, r1 = run_local(_write_with_a_failing_rank, world_size=2, args=(lattice["csv"], tmp_path / "lat"),
                       timeout_s=600)
    assert r1 == "RuntimeError: out of memory on this rank's device"
    assert r0 == ("LatentCacheError: rank 1 of 2 failed writing its share of the latent cache: RuntimeError: out "
                  "of memory on this rank's device")
    assert list(tmp_path.iterdir()) == []


def _write_where_rank0_cannot(rank, csv_path, out):
    from engine.builders import build_dataset
    from engine.datagen.latents import write_latent_cache
    from engine.runtime.launch import init_distributed
    init_distributed()
    dataset = build_dataset(load_config(CONFIG, overrides(csv_path)), train=True, frames=True)
    try:
        write_latent_cache(dataset, lambda u8: torch.zeros(u8.shape[1], 4, 8), {}, out)
    except Exception as e:  # noqa: BLE001 -- the test reads what each rank raised
        return f"{type(e).__name__}: {e}"
    return None


def test_a_folder_rank0_cannot_make_fails_every_rank_at_once(lattice, tmp_path):
    """Rank 0 makes the shared temporary folder before any rank writes: its failure reaches the others
    (which would otherwise wait for it until the process group's timeout)."""
    from engine.runtime.launch import run_local
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "lat"
    results = run_local(_write_where_rank0_cannot, world_size=2, args=(lattice["csv"], out), timeout_s=180)
    for r in results:
        assert r.startswith(f"LatentCacheError: {out}: cannot make the cache's folder beside it (") and "--output" in r
    assert results[0] == results[1]


def test_a_version_one_cache_reads_and_strided_clips_read_frame_by_frame(cache, tmp_path):
    """A cache written before the index listed its files (version 1: one latents.bin) reads as it did; a
    clip that skips more frames than it reads takes them one by one, the same latents as a span read."""
    old = tmp_path / "v1"
    old.mkdir()
    index = json.loads((cache["dir"] / "index.json").read_text())
    del index["files"]
    index["version"] = 1
    for v in index["videos"]:
        del v["file"]
    (old / "index.json").write_text(json.dumps(index))
    (old / "latents.bin").symlink_to(cache["dir"] / "latents.bin")
    a, b = _all_latents(LatentCache(old)), _all_latents(LatentCache(cache["dir"]))
    assert all(torch.equal(x, y) for p in a for x, y in zip(a[p], b[p]))
    c = LatentCache(cache["dir"])
    e = next(iter(c.entries.values()))
    strided, dense = c.frames(e, np.array([1, 7, 13]), True), c.frames(e, np.arange(1, 14), True)
    assert torch.equal(strided, dense[[0, 6, 12]])
