"""Does the predictor expect anything? Its future-prediction error on possible clips against copying the
last time step's target features, on tokens that hold an object and on background tokens.

    python bench/anomaly_predictor.py --config configs/tiny_events_causal_cpu.yaml --checkpoint runs/events_causal \
        --data data/generated/events/events.csv [--random-init]

Surprise can only flag an impossible event where the prediction of the possible future beats a guess that
knows no dynamics; copying the last step is that guess, in two versions: `copy_last_l1` copies the target
features of step t-1 as the target encoder computes them from the whole clip (its step t-1 has attended to
step t: a copy that has seen the answer), `copy_causal_l1` as the target encoder computes them from the
steps before t alone (what the predictor is given). A token holds an object when any pixel of its
patch, over the step's frames, is far (0.5 normalised units) from the clip's median colour (the plain
background of the events generator's scenes). Prints one line per token kind: share, predictor L1, the
two copies' L1. A world model (`app: vjepa_droid`, each frame encoded alone) is compared per frame, on its
teacher-forced predictions of frames 1..; its frames never see the frames after them, so its two copies
are one.
"""
import argparse

import torch

from engine.config import load_config
from engine.eval.anomaly import future_masks, load_jepa, surprise_dataset, token_surprise
from engine.eval.probe import _Indexed
from engine.jepa import plan_packing


@torch.no_grad()
def predictor_vs_copy(model, cfg, dataset, batch_size: int = 20):
    """(predictor error, copy-last error, causal copy-last error, object token), each [M, T-1, S], on label-0
    clips."""
    T, H, W = model.encoder.grid
    p, tub = cfg.data.patch_size, cfg.data.tubelet_size
    if cfg.is_action_conditioned:
        T, tub = cfg.frames_per_clip, 1
    out = ([], [], [], [])
    for clips, y in torch.utils.data.DataLoader(_Indexed(dataset, 0), batch_size=batch_size):
        clips = clips[torch.as_tensor(y) == 0]
        B = len(clips)
        if B == 0:
            continue
        if cfg.is_action_conditioned:   # L1 here too (its surprise is its own loss): comparable with the copies
            h_BND = model.encode(clips)
            z_tf, _ = model.predictions(h_BND)
            err_BN = torch.cat([torch.zeros(B, H * W), (z_tf - h_BND[:, H * W:]).abs().mean(-1)], 1)
            h_BTSD = h_BND.view(B, T, H * W, -1)
            copy_BTS = causal_BTS = (h_BTSD[:, 1:] - h_BTSD[:, :-1]).abs().mean(-1)
        else:
            err_BN, _, _ = token_surprise(model, clips, future_masks((T, H, W), B))
            h_BND = model.target_encoder.forward_dense(model.target_encoder.embed(clips))
            h_BTSD = torch.nn.functional.layer_norm(h_BND, (h_BND.shape[-1],)).view(B, T, H * W, -1)
            copy_BTS = (h_BTSD[:, 1:] - h_BTSD[:, :-1]).abs().mean(-1)
            causal_BTS = (h_BTSD[:, 1:] - causal_last_step(model.target_encoder, clips, (T, H, W))).abs().mean(-1)
        x = clips.view(B, 3, T, tub, H, p, W, p)
        bg = x.reshape(B, 3, -1).median(-1).values.view(B, 3, 1, 1, 1, 1, 1, 1)
        obj_BTS = ((x - bg).abs().amax(1) > 0.5).any(2).any(3).any(-1).reshape(B, T, H * W)[:, 1:]
        for acc, v in zip(out, (err_BN.view(B, T, -1)[:, 1:], copy_BTS, causal_BTS, obj_BTS)):
            acc.append(v)
    return tuple(torch.cat(v) for v in out)


def causal_last_step(encoder, clips_B3THW, grid_THW) -> torch.Tensor:
    """[B, T-1, S, D]: for t = 1..T-1, the layer-normed features of step t-1 from the encoder run on steps < t."""
    T, H, W = grid_THW
    S, B = H * W, clips_B3THW.shape[0]
    x_BND = encoder.embed(clips_B3THW)
    out = []
    for t, masks in enumerate(future_masks(grid_THW, B), start=1):   # one set per t: context = steps < t
        z_TD = encoder.forward_packed(x_BND, plan_packing(masks, B, T * S).ctx)
        out.append(z_TD.view(B, t * S, -1)[:, -S:])                    # each sample's steps in order
    z_BTSD = torch.stack(out, 1)
    return torch.nn.functional.layer_norm(z_BTSD, (z_BTSD.shape[-1],))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--data", required=True, help="CSV of 'path label' lines; label-0 clips are scored")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    model = load_jepa(cfg, args.checkpoint, random_init=args.random_init)
    pred, copy, causal, obj = predictor_vs_copy(model, cfg, surprise_dataset(cfg, args.data))
    print("tokens,share,predictor_l1,copy_last_l1,copy_causal_l1")
    for name, sel in (("object", obj), ("background", ~obj)):
        print(f"{name},{sel.float().mean():.3f},{pred[sel].mean():.3f},{copy[sel].mean():.3f},{causal[sel].mean():.3f}")


if __name__ == "__main__":
    main()
