"""Storage: atomic checkpoints, the verified prune cache, and the pipeline identity -> cache -> prune -> write."""
