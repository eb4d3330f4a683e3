"""The lm-eval side, the only package importing lm-eval: ``pruned-hf``, ``pruned-vllm``, registration, task helpers."""
