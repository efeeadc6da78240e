"""Training: config, task interface, trainer loop, checkpoints, distributed."""
