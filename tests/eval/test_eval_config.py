"""Eval configs: both reference layouts load with every key their classification configs use, each key
lands where it acts, and anything else is refused by name."""
import pytest
import yaml

from engine.config import ConfigError
from engine.eval.config import load_eval_config

# The keys (and typical values) of facebookresearch/jepa's configs/evals/*.yaml
VJEPA = """
nodes: 8
tasks_per_node: 8
tag: k400-16x8x3
eval_name: video_classification_frozen
resume_checkpoint: false
data:
  dataset_train: /data/k400_train.csv
  dataset_val: /data/k400_val.csv
  dataset_type: VideoDataset
  num_classes: 400
  frames_per_clip: 16
  num_segments: 8
  num_views_per_segment: 3
  frame_step: 4
optimization:
  attend_across_segments: true
  num_epochs: 20
  resolution: 224
  batch_size: 4
  weight_decay: 0.01
  lr: 0.001
  start_lr: 0.001
  final_lr: 0.0
  warmup: 0.
  use_bfloat16: true
pretrain:
  model_name: vit_large
  checkpoint_key: target_encoder
  clip_duration: null
  frames_per_clip: 16
  tubelet_size: 2
  uniform_power: true
  use_silu: false
  tight_silu: false
  use_sdpa: true
  patch_size: 16
  folder: /models/
  checkpoint: jepa-latest.pth.tar
  write_tag: jepa
"""

# The keys of facebookresearch/vjepa2's configs/eval/*/*.yaml (classification), grid shortened
VJEPA2 = """
cpus_per_task: 16
eval_name: video_classification_frozen
folder: /evals/vitl/ssv2
mem_per_gpu: 220G
nodes: 8
max_workers: 8
num_workers: 8
resume_checkpoint: true
tag: ssv2-vitl16-16x2x3-16f
tasks_per_node: 8
experiment:
  classifier:
    num_heads: 16
    num_probe_blocks: 4
  data:
    dataset_type: VideoDataset
    dataset_train: /data/ssv2_train_paths.csv
    dataset_val: /data/ssv2_val_paths.csv
    frame_step: 4
    frames_per_clip: 16
    num_classes: 174
    num_segments: 2
    num_views_per_segment: 3
    resolution: 256
  optimization:
    batch_size: 4
    multihead_kwargs:
    - {final_lr: 0.0, final_weight_decay: 0.01, lr: 0.005, start_lr: 0.005, warmup: 0.0, weight_decay: 0.01}
    - {final_lr: 0.0, final_weight_decay: 0.8, lr: 0.0001, start_lr: 0.0001, warmup: 0.0, weight_decay: 0.8}
    num_epochs: 20
    use_bfloat16: true
    use_pos_embed: false
model_kwargs:
  checkpoint: /ckpt/vitl.pt
  module_name: evals.video_classification_frozen.modelcustom.vit_encoder_multiclip_multilevel
  pretrain_kwargs:
    encoder:
      checkpoint_key: target_encoder
      img_temporal_dim_size: null
      model_name: vit_large
      patch_size: 16
      tubelet_size: 2
      uniform_power: true
      use_rope: true
  wrapper_kwargs:
    max_frames: 128
    use_pos_embed: false
    out_layers: [17, 19, 21, 23]
"""


def test_vjepa_layout():
    ec = load_eval_config(raw=yaml.safe_load(VJEPA))
    assert ec.layout == "vjepa" and ec.classifier.layout == "vjepa" and ec.classifier.num_probe_blocks == 1
    assert ec.classifier.num_heads is None                       # the encoder's, as the reference
    assert ec.checkpoint == "/models/jepa-latest.pth.tar"
    assert ec.output_folder == "/models/video_classification_frozen/k400-16x8x3"
    assert ec.data.resolution == 224 and ec.data.num_segments == 8 and ec.data.num_views_per_segment == 3
    assert len(ec.heads) == 1 and ec.heads[0].lr == 0.001 and ec.heads[0].final_weight_decay == 1e-6
    assert ec.encoder.wide_silu is False and ec.encoder.frames_per_clip == 16 and ec.encoder.uniform_power
    assert ec.optimization.use_bfloat16 and ec.optimization.attend_across_segments
    assert set(ec.ignored_keys) == {"nodes", "tasks_per_node", "resume_checkpoint"}


def test_vjepa2_layout():
    ec = load_eval_config(raw=yaml.safe_load(VJEPA2))
    assert ec.layout == "vjepa2" and ec.classifier.layout == "vjepa2" and ec.classifier.num_probe_blocks == 4
    assert [h.weight_decay for h in ec.heads] == [0.01, 0.8] and ec.heads[1].lr == 1e-4
    assert ec.encoder.use_rope and ec.wrapper.out_layers == [17, 19, 21, 23]
    assert ec.output_folder == "/evals/vitl/ssv2" and ec.features.num_workers == 8
    assert "mem_per_gpu" in ec.ignored_keys


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["experiment"]["data"].update(num_segmnts=2), "experiment.data.num_segmnts: unknown key"),
    (lambda r: r.update(eval_name="action_anticipation_frozen"), "eval_name: 'action_anticipation_frozen'"),
    (lambda r: r["experiment"]["optimization"]["multihead_kwargs"][0].update(lr="fast"),
     r"multihead_kwargs.0.lr: expected a number"),
    (lambda r: r["model_kwargs"].update(module_name="my.module"), "model_kwargs.module_name"),
    (lambda r: r["model_kwargs"]["wrapper_kwargs"].update(use_pos_embed=True), "use_pos_embed"),
    (lambda r: r["experiment"]["data"].update(num_views_per_segment=0), "num_views_per_segment: must be >= 1"),
])
def test_bad_keys_are_refused_by_name(edit, match):
    raw = yaml.safe_load(VJEPA2)
    edit(raw)
    with pytest.raises(ConfigError, match=match):
        load_eval_config(raw=raw)


def test_vjepa_layout_refuses_unknown_pretrain_key():
    raw = yaml.safe_load(VJEPA)
    raw["pretrain"]["use_rop"] = True
    with pytest.raises(ConfigError, match="pretrain.use_rop"):
        load_eval_config(raw=raw)


def test_our_configs_load():
    ec = load_eval_config("configs/eval/tiny_probe.yaml")
    assert ec.encoder.config == "configs/tiny_cpu.yaml" and len(ec.heads) == 4
