"""A tiny Llama whose greedy next token is scripted, and whose thinking length depends on a mode word in the prompt.

The residual stream holds the one-hot of the current token, a constant dimension, and a memory dimension per mode word.
The one attention head reads the constant dimension as its query and the mode words as its keys, on the RoPE pair
that barely rotates (so it finds the mode word anywhere in the prompt), and copies the mode into memory. ``lm_head``
scores 2.0 on the scripted successor of the current token, 1.0 on the first thinking word of the prompt's mode, 0.8 on
the mode's second choice (what follows when ``min_tokens`` masks the first) and 0.5 on the default chain. So after
``<think>`` (or ``think``, ``Wait``, ``Hmm``) the model thinks ``CHAINS[mode]``, then emits ``</think>``.
:func:`next_token` is the same rule in plain Python, for the fake engine of the tests.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<think>", "</think>", "<|im_start|>"]
MODES = {  # mode word -> (first choice after a start-like word, second choice)
    "short": ("s1", "s1"),
    "mid": ("m1", "m1"),
    "long": ("l1", "l1"),
    "endless": ("e1", "e1"),
    "mute": ("</s>", "x1"),  # eos as the first thinking token; x1 when min_tokens masks it
    "lines": ("n1", "n1"),  # never ends; every other token is a newline
}
START_LIKE = ("<think>", "think", "Wait", "Hmm")
DEFAULT_START = "m1"  # no mode word in the prompt
SCRIPT = {  # everything else -> "filler", "filler" -> "filler"
    "s1": "</think>",
    "m1": "m2",
    "m2": "m3",
    "m3": "</think>",
    "l1": "l2",
    "l2": "l3",
    "l3": "l4",
    "l4": "l5",
    "l5": "l6",
    "l6": "</think>",
    "e1": "e2",
    "e2": "e1",
    "x1": "</think>",
    "n1": "\n",
    "\n": "n1",
    "</think>": "answer",
    "<|im_start|>": "answer",
    "answer": "is",
    "is": "42",
    "42": ".",
    ".": "</s>",
    "Final": "Answer",
    "Answer": ":",
    ":": "42",
}
WORDS = list(
    dict.fromkeys(
        [
            *SPECIAL,
            *MODES,
            *sorted(
                {w for w in SCRIPT if w not in SPECIAL} | {w for w in SCRIPT.values() if w not in SPECIAL} | {"x1"}
            ),
            *[w for w in START_LIKE if w not in SPECIAL],
            "question",
            "filler",
            "x",
        ]
    )
)
INDEX = {w: i for i, w in enumerate(WORDS)}


def next_token(current: int, context: list[int], masked: frozenset[int] = frozenset()) -> int:
    """The model's greedy choice after ``current`` (``context`` holds the prompt's mode word), skipping ``masked``."""
    mode = next((WORDS[t] for t in context if WORDS[t] in MODES), None)
    word = WORDS[current]
    scores: dict[str, float] = {}
    if word in START_LIKE:
        scores[DEFAULT_START] = 0.5
    else:
        scores[SCRIPT.get(word, "filler")] = 2.0
    if mode is not None:
        first, second = MODES[mode]
        scores[first] = max(scores.get(first, 0.0), 1.0)
        scores[second] = max(scores.get(second, 0.0), 0.8 if second != first else 1.0)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    for candidate, _ in ranked:
        if INDEX[candidate] not in masked:
            return INDEX[candidate]
    return next(i for i in range(len(WORDS)) if i not in masked)  # all scores 0: lowest unmasked id (argmax)


def make_word_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(dict(INDEX), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n|[^\s\w|<>/]+|[\w|<>/]+"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<think>", "</think>", "<|im_start|>"]})
    return fast


def make_scripted_model(hidden: int = 128):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, const = len(WORDS), len(WORDS)
    memory = {mode: const + 1 + k for k, mode in enumerate(MODES)}
    assert const + 1 + len(MODES) <= hidden
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
    slow = 31  # the RoPE pair (31, 63) turns by 1e-4 rad per position: content-only attention
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.norm.weight.fill_(1.0)
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
        attn = layer.self_attn
        attn.q_proj.weight[slow, const] = 2.0
        for k, mode in enumerate(MODES):
            attn.k_proj.weight[slow, INDEX[mode]] = 2.0
            attn.v_proj.weight[k, INDEX[mode]] = 1.0
            attn.o_proj.weight[memory[mode], k] = 1.0 / 8
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        for word, i in INDEX.items():
            embed[i, i] = 1.0
            embed[i, const] = 1.0
            if word in START_LIKE:
                head[INDEX[DEFAULT_START], i] = 0.5
            else:
                head[INDEX[SCRIPT.get(word, "filler")], i] = 2.0
        for mode, (first, second) in MODES.items():
            head[INDEX[first], memory[mode]] = 1.0
            if second != first:
                head[INDEX[second], memory[mode]] = 0.8
    return model


def save_scripted(folder: Path, hidden: int = 128) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_scripted_model(hidden).save_pretrained(folder)
    make_word_tokenizer().save_pretrained(folder)
    return folder
