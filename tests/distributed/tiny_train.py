"""Train the real tiny V-JEPA with the DeepSpeed backend under a real launcher (the resume and failure tests run this).

    torchrun --standalone --nproc_per_node 2 -m tests.distributed.tiny_train --out DIR --stage 3 --steps 8
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module tests.distributed.tiny_train --out DIR ...

In-memory random clips and the config's real masks: the launcher, the ranks and the checkpoints are
under test here, not the video reader (test_deepspeed_launcher_runs_engine_train_zero3 covers that).
"""
import argparse
import json

import torch

from tests.distributed.tiny import RandomClips, build_tiny, tiny_cfg


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--local_rank", type=int, default=None)  # the deepspeed launcher passes it
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from engine.builders import build_mask_sampler
    from engine.runtime.trainer import Trainer
    cfg = tiny_cfg([f"meta.checkpoint_every={a.every}"])
    tr = Trainer(cfg, a.out, deepspeed=a.stage, model=build_tiny(cfg), dataset=RandomClips(cfg),
                   mask_sampler=build_mask_sampler(cfg), progress=False, timeout_s=a.timeout)
    s = tr.fit(max_steps=a.steps, resume=a.resume)
    if tr.rank == 0:
        print("SUMMARY " + json.dumps({k: s[k] for k in ("steps", "steps_this_run", "losses")}))


if __name__ == "__main__":
    main()
