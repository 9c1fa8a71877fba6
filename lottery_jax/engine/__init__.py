"""The one engine: train state, sharded step builders, loop, checkpoints, results."""
