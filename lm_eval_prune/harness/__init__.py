"""The lm-eval harness side, the only package importing lm-eval: ``pruned-hf``, ``pruned-vllm``, registration, task helpers."""
