"""The training loop (trainer) over its step backends (local, DeepSpeed), with resume, faults, metrics and launch."""
