"""Primitives every layer of the engine may use, importing nothing of the engine above them: atomic file
writes (io), training checkpoint files (checkpoint), the EMA target (ema), learning-rate / weight-decay /
momentum schedules (schedules), optimizer groups, clipping and autocast (step), strict state-dict
matching (state), two independent halves of a CPU step run side by side (beside), and the process group
this process is in (world)."""
