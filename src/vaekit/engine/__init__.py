"""The one training engine: loop, checkpoints, run directories, distributed set-up."""
