"""Shared fixtures: offline settings, tiny models built from configs, a trained tokenizer, the real shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LM_EVAL_PRUNE_SHARED", REPO.parent / "shared"))
STORIES = SHARED / "models" / "stories260k"
DATA = SHARED / "data"
WAR_AND_PEACE = DATA / "calibration" / "war_and_peace_pg2600.txt"

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a model that predicts text can be pruned layer by layer",
    "one two three four five six seven eight nine ten",
    "wait, let me think again about the answer to this question",
    "the answer is 42 and the final answer is boxed",
] * 4


def make_tokenizer():
    """A byte-level BPE tokenizer trained on a few lines, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def make_model(
    arch: str = "llama", *, layers: int = 2, hidden: int = 64, tied: bool = False, seed: int = 0, vocab: int = 300
):
    """A random tiny causal LM of ``arch`` (llama, mistral, qwen2, qwen3) from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not STORIES.is_dir():
        pytest.fail(f"the shared tiny model is missing at {STORIES}; set LM_EVAL_PRUNE_SHARED")
    return STORIES


def random_ids(n: int, seqlen: int, vocab: int = 300, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n, seqlen), generator=generator)
