"""A tiny Llama whose greedy next token is scripted: token t is always followed by successor[t].

Blocks are made identities (o_proj and down_proj zero), embeddings are one-hot, and ``lm_head`` maps the one-hot of t
to a logit of sqrt(hidden) on successor[t] and 0 elsewhere, so greedy decoding follows the script in HF and vLLM alike.
"""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<think>",
    "</think>",
    "Wait",
    "question",
    "step",
    "one",
    "two",
    "answer",
    "is",
    "42",
    ".",
    "Final",
    "Answer",
    ":",
    "filler",
]
SCRIPT = {  # everything else -> "filler", "filler" -> "filler"
    "question": "step",
    "<think>": "step",
    "step": "one",
    "one": "two",
    "two": "</think>",
    "Wait": "step",
    "</think>": "answer",
    "answer": "is",
    "is": "42",
    "42": ".",
    ".": "</s>",
    ":": "42",
}


def make_word_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return fast


def make_scripted_model(hidden: int = 128):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(WORDS)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    index = {w: i for i, w in enumerate(WORDS)}
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for word, i in index.items():
            model.model.embed_tokens.weight[i, i] = 1.0
            model.lm_head.weight[index[SCRIPT.get(word, "filler")], i] = 1.0
    return model


def save_scripted(folder: Path, hidden: int = 128) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_scripted_model(hidden).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder
