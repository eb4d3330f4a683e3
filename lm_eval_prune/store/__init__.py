"""Storage: checkpoints written atomically, the verified prune cache, and the pipeline identity -> cache -> prune -> write."""
