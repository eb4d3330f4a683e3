"""The study runner: a pruning x thinking-budget grid as one resumable, shardable command (``lm-eval-prune study``)."""
