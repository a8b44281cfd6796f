"""Training: the Accelerate loop, LR schedule, checkpoints and run directories."""
