"""Does the predictor expect anything? Its future-prediction error on possible clips against copying the
last time step's target features, on tokens that hold an object and on background tokens.

    python bench/anomaly_predictor.py --config configs/tiny_events_causal_cpu.yaml --checkpoint runs/events_causal \
        --data data/generated/events/events.csv [--random-init]

Surprise can only flag an impossible event where the prediction of the possible future beats a guess that
knows no dynamics; copying the last step is that guess. A token holds an object when any pixel of its
patch, over the step's frames, is far (0.5 normalised units) from the clip's median colour (the plain
background of the events generator's scenes). Prints one line per token kind: share, predictor L1, copy L1.
"""
import argparse

import torch

from engine.config import load_config
from engine.eval.anomaly import future_masks, load_jepa, surprise_dataset, token_surprise
from engine.eval.probe import _Indexed


@torch.no_grad()
def predictor_vs_copy(model, cfg, dataset, batch_size: int = 20):
    """(predictor error [M, T-1, S], copy-last error [M, T-1, S], object token [M, T-1, S]) on label-0 clips."""
    T, H, W = model.encoder.grid
    p, tub = cfg.data.patch_size, cfg.data.tubelet_size
    out = ([], [], [])
    for clips, y in torch.utils.data.DataLoader(_Indexed(dataset, 0), batch_size=batch_size):
        clips = clips[torch.as_tensor(y) == 0]
        B = len(clips)
        if B == 0:
            continue
        err_BN, _, _ = token_surprise(model, clips, future_masks((T, H, W), B))
        h_BND = model.target_encoder.forward_dense(model.target_encoder.embed(clips))
        h_BTSD = torch.nn.functional.layer_norm(h_BND, (h_BND.shape[-1],)).view(B, T, H * W, -1)
        copy_BTS = (h_BTSD[:, 1:] - h_BTSD[:, :-1]).abs().mean(-1)
        x = clips.view(B, 3, T, tub, H, p, W, p)
        bg = x.reshape(B, 3, -1).median(-1).values.view(B, 3, 1, 1, 1, 1, 1, 1)
        obj_BTS = ((x - bg).abs().amax(1) > 0.5).any(2).any(3).any(-1).reshape(B, T, H * W)[:, 1:]
        for acc, v in zip(out, (err_BN.view(B, T, -1)[:, 1:], copy_BTS, obj_BTS)):
            acc.append(v)
    return tuple(torch.cat(v) for v in out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--data", required=True, help="CSV of 'path label' lines; label-0 clips are scored")
    args = ap.parse_args()
    cfg = load_config(args.config, [])
    model = load_jepa(cfg, args.checkpoint, random_init=args.random_init)
    pred, copy, obj = predictor_vs_copy(model, cfg, surprise_dataset(cfg, args.data))
    print("tokens,share,predictor_l1,copy_last_l1")
    for name, sel in (("object", obj), ("background", ~obj)):
        print(f"{name},{sel.float().mean():.3f},{pred[sel].mean():.3f},{copy[sel].mean():.3f}")


if __name__ == "__main__":
    main()
