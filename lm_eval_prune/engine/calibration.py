"""Calibration tokens: text, JSONL, token-id files or Hub sets -> ``LongTensor[nsamples, seqlen]``, seeded."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.errors import PruneConfigError

C4_REPO = "allenai/c4"
C4_SHARD = "en/c4-train.00000-of-01024.json.gz"


def load_calibration(config: PruneConfig, tokenizer: Any) -> torch.Tensor:
    """The ``[nsamples, seqlen]`` token ids ``config.calibration`` names, deterministic for ``config.seed``."""
    source = config.calibration
    if source == "c4":
        return sample_documents(_hub_c4_texts(), _encoder(tokenizer), config.nsamples, config.seqlen, config.seed, "c4")
    if source == "wikitext2":
        return sample_stream(
            _encoder(tokenizer)(_hub_wikitext2_text()), config.nsamples, config.seqlen, config.seed, "wikitext2"
        )
    path = Path(source)
    if path.suffix in (".pt", ".npy"):
        return load_token_file(path, config.nsamples, config.seqlen, vocab_size=_vocab_size(tokenizer))
    if path.suffix == ".jsonl":
        docs = read_jsonl_texts(path)
        return sample_documents(docs, _encoder(tokenizer), config.nsamples, config.seqlen, config.seed, str(path))
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    return sample_stream(_encoder(tokenizer)(text), config.nsamples, config.seqlen, config.seed, str(path))


def tokens_digest(ids: torch.Tensor) -> str:
    """Content hash of calibration tokens (part of every cache key)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def sample_stream(ids: Sequence[int], nsamples: int, seqlen: int, seed: int, name: str) -> torch.Tensor:
    """WikiText-style windows of one long token stream: ``i = randint(0, n - seqlen - 1)``, take ``[i, i+seqlen)``."""
    n = len(ids)
    if n <= seqlen or n < nsamples * seqlen:
        raise PruneConfigError(
            f"calibration {name!r} has {n} tokens; nsamples*seqlen = {nsamples}*{seqlen} needs at least {nsamples * seqlen}"
        )
    rng = random.Random(seed)
    stream = torch.as_tensor(ids, dtype=torch.long)
    rows = []
    for _ in range(nsamples):
        start = rng.randint(0, n - seqlen - 1)
        rows.append(stream[start : start + seqlen])
    return torch.stack(rows)


def sample_documents(
    docs: Sequence[str], encode: Callable[[str], list[int]], nsamples: int, seqlen: int, seed: int, name: str
) -> torch.Tensor:
    """C4-style (Wanda ``get_c4``): draw random documents until one has more than ``seqlen`` tokens, take a random window."""
    if not docs:
        raise PruneConfigError(f"calibration {name!r} holds no documents")
    rng = random.Random(seed)
    cache: dict[int, list[int]] = {}
    rows = []
    max_draws = 50 * len(docs) + 1000
    draws = 0
    for _ in range(nsamples):
        while True:
            draws += 1
            if draws > max_draws:
                raise PruneConfigError(f"calibration {name!r}: no document has more than seqlen={seqlen} tokens")
            index = rng.randint(0, len(docs) - 1)
            ids = cache.get(index)
            if ids is None:
                ids = cache[index] = encode(docs[index])
            if len(ids) > seqlen:
                break
        start = rng.randint(0, len(ids) - seqlen - 1)
        rows.append(torch.tensor(ids[start : start + seqlen], dtype=torch.long))
    return torch.stack(rows)


def read_jsonl_texts(path: Path) -> list[str]:
    """The ``text`` field of every line of a JSONL file."""
    texts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PruneConfigError(
                    f"calibration file {str(path)!r} line {number} is not a JSON object with a 'text' field"
                ) from None
    return texts


def load_token_file(path: Path, nsamples: int, seqlen: int, vocab_size: int | None = None) -> torch.Tensor:
    """Token ids saved with ``torch.save`` (.pt) or ``numpy.save`` (.npy), used as is."""
    if path.suffix == ".npy":
        import numpy as np

        ids = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        ids = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise PruneConfigError(f"calibration file {str(path)!r} must hold a 2-D integer tensor [nsamples, seqlen]")
    if tuple(ids.shape) != (nsamples, seqlen):
        raise PruneConfigError(
            f"calibration file {str(path)!r} has shape {tuple(ids.shape)}; nsamples={nsamples}, seqlen={seqlen} ask for ({nsamples}, {seqlen})"
        )
    ids = ids.to(torch.long)
    if vocab_size is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise PruneConfigError(f"calibration file {str(path)!r} has token ids outside [0, {vocab_size})")
    return ids


def _encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    if tokenizer is None:
        raise PruneConfigError("a text calibration source needs a tokenizer")
    return lambda text: list(tokenizer(text, verbose=False)["input_ids"])


def _vocab_size(tokenizer: Any) -> int | None:
    return len(tokenizer) if tokenizer is not None else None


def _hub_c4_texts() -> list[str]:
    from datasets import load_dataset

    data = load_dataset(C4_REPO, data_files={"train": C4_SHARD}, split="train")
    return data["text"]


def _hub_wikitext2_text() -> str:
    from datasets import load_dataset

    data = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    return " ".join(data["text"])
