"""The multi-stage trainer: loop, checkpoints, distributed set-up."""
