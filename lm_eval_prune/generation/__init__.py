"""Generation: the s1 budget-forcing protocol (pure) and the HF / vLLM step drivers that run it."""
