"""lm-eval model adapters: ``pruned-hf`` (models.hf) and ``pruned-vllm`` (models.vllm). Import them directly."""
