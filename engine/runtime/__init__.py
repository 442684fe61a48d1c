"""Training runtime: schedules, EMA, checkpoints, logging."""
