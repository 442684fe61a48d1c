"""torch.hub entry points: a JEPA, or its frozen target encoder, from exported or reference weights.

    model = torch.hub.load("path/to/this/clone", "jepa", source="local", checkpoint="model.safetensors")
    enc = torch.hub.load("path/to/this/clone", "encoder", source="local", checkpoint="vitl16.pth.tar",
                         config="configs/vjepa_vitl16.yaml", kind="vjepa")
    model = torch.hub.load("path/to/this/clone", "jepa", source="local", config="configs/tiny_cpu.yaml")  # random init

Both wrap engine.from_pretrained (strict loading; see engine/export.py).
"""
dependencies = ["torch", "numpy", "yaml", "safetensors"]


def jepa(checkpoint=None, config=None, kind=None):
    """The JEPA (encoder, predictor, target encoder): from `checkpoint` (.safetensors, or a reference
    .pth.tar with its config and kind), or built from `config` with fresh weights when no checkpoint."""
    import engine
    if checkpoint is None:
        if config is None:
            raise ValueError("jepa: pass checkpoint= (weights) or config= (a run YAML, for fresh weights)")
        return engine.build_model(engine.load_config(config)).eval()
    return engine.from_pretrained(checkpoint, config=config, kind=kind)


def encoder(checkpoint=None, config=None, kind=None):
    """The target encoder (the features the reference evaluates), frozen, in eval mode."""
    return jepa(checkpoint, config, kind).target_encoder
