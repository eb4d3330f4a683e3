"""``self:PROMPTS``: the dense model writes its own reasoning traces, which then calibrate its pruning.

Generation is HF ``generate`` (greedy, or seeded sampling), batched with left padding, ``calib_gen_tokens`` new
tokens per prompt. Traces are kept as token ids (prompt + completion, cut after the first end token) so calibration
reads exactly what the model wrote, and cached on disk under a key of (model, prompts file, settings): generating
costs minutes to hours, re-reading a cache file seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lm_eval_prune.engine.traces import (
    QUESTION_FIELDS,
    Documents,
    as_text,
    field_listing,
    has_chat_template,
    read_records,
)
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import write_atomically

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class GenerationSettings:
    """What decides the traces besides model and prompts: ``temperature`` 0 is greedy, ``seed`` seeds sampling."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    engine: str = "hf"

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def key(self) -> dict[str, Any]:
        """The settings in the cache key (the seed only matters when sampling)."""
        values = asdict(self)
        if not self.sampling:
            values.pop("seed")
            values.pop("top_p")
        return values


@dataclass(frozen=True)
class Prompts:
    """Rendered prompts of a prompts file: text, token ids, and whether the chat template rendered them."""

    texts: list[str]
    ids: list[list[int]]
    templated: bool
    sha256: str


def prompt_field(fields: list[str], what: str) -> str:
    """The field a prompts file's problems are read from; one line naming ``what`` and its fields when none fits."""
    field = next((f for f in QUESTION_FIELDS if f in fields), "messages" if "messages" in fields else "")
    if not field:
        raise PruneConfigError(
            f"{what} has no prompt field (it has: {field_listing(fields)}); "
            "give 'problem', 'question', 'prompt' or chat 'messages'"
        )
    return field


def read_prompts(path: Path, tokenizer: Any) -> Prompts:
    """Each record's ``problem``/``question``/``prompt`` as the user turn (or its chat ``messages``), rendered with
    the chat template's generation prompt when the tokenizer has one."""
    what = f"self: prompts file {str(path)!r}"
    records = read_records(path, what)
    keys: set[str] = set()
    for record in records:
        keys.update(record)
    field = prompt_field(sorted(keys), what)
    templated = has_chat_template(tokenizer)
    texts: list[str] = []
    for number, record in enumerate(records, 1):
        value = record.get(field)
        if field == "messages":
            turns = value if isinstance(value, list) and all(isinstance(t, dict) for t in value) else None
        else:
            turns = [{"role": "user", "content": as_text(value)}] if as_text(value) else None
        if not turns:
            raise PruneConfigError(f"{what} record {number} has no {field!r} text")
        if templated:
            texts.append(str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)))
        else:
            texts.append("\n\n".join(as_text(t.get("content")) for t in turns) + "\n\n")
    ids = [list(tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"]) for text in texts]
    return Prompts(texts, ids, templated, hashlib.sha256(path.read_bytes()).hexdigest())


def model_fingerprint(model: Any) -> str:
    """A cheap identity of a model's weights when the caller has none: its name, config, and a strided sample of
    every parameter (hashing all weights of an 8B model would cost a minute)."""
    digest = hashlib.sha256()
    config: Any = getattr(model, "config", None)
    digest.update(str(getattr(config, "name_or_path", "")).encode())
    if hasattr(config, "to_json_string"):
        digest.update(config.to_json_string().encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        if param.device.type == "meta":
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].to(device="cpu", dtype=torch.float64)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _end_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a trace: the model's generation eos (a chat model's end of turn) and the tokenizer's eos."""
    ends: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [*(configured if isinstance(configured, (list, tuple)) else [configured]), tokenizer.eos_token_id]:
        if value is not None and int(value) not in ends:
            ends.append(int(value))
    return ends


def _until_end(ids: list[int], ends: list[int]) -> list[int]:
    """Generated ids up to and including the first end token (what follows it is padding)."""
    for position, token in enumerate(ids):
        if token in ends:
            return ids[: position + 1]
    return ids


@torch.no_grad()
def generate_hf(model: Any, tokenizer: Any, prompts: list[list[int]], settings: GenerationSettings) -> list[list[int]]:
    """Completions of ``prompts`` with HF ``generate``, batched (longest prompts first, left padded)."""
    from transformers import GenerationConfig

    ends = _end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
    sampling: dict[str, Any] = (
        {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0, "min_p": 0.0}
        if settings.sampling
        else {}
    )
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.sampling,
        repetition_penalty=1.0,
        pad_token_id=pad,
        eos_token_id=ends or None,
        **sampling,
    )
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for batch_no, start in enumerate(range(0, len(order), settings.batch_size)):
            batch = order[start : start + settings.batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                prompt = prompts[index]
                ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                mask[row, width - len(prompt) :] = 1
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(settings.seed + batch_no)
                sequences = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, use_cache=True
                )
            new = sequences[:, width:].tolist()
            for row, index in enumerate(batch):
                out[index] = _until_end(new[row], ends)
            log.info("self traces: %d/%d prompts generated", min(start + len(batch), len(order)), len(order))
    finally:
        model.train(was_training)
    return out


def traces_digest(traces: list[dict[str, Any]]) -> str:
    """sha256 of the traces' token ids (what calibration reads)."""
    payload = json.dumps([[t["prompt_ids"], t["completion_ids"]] for t in traces], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def self_traces(
    model: Any,
    tokenizer: Any,
    prompts_path: Path,
    settings: GenerationSettings,
    cache_dir: Path | None = None,
    model_key: str | None = None,
    need_longer_than: int = 0,
) -> Documents:
    """The model's traces for every prompt of ``prompts_path`` (from ``cache_dir`` when generated before).

    ``need_longer_than``: calibration windows need documents over that many tokens; refused before generating when
    no prompt plus ``max_new_tokens`` can reach it.
    """
    prompts = read_prompts(prompts_path, tokenizer)
    longest = max(len(p) for p in prompts.ids) + settings.max_new_tokens
    if need_longer_than and longest <= need_longer_than:
        raise PruneConfigError(
            f"self:{prompts_path} traces have at most {longest} tokens (longest prompt + calib_gen_tokens="
            f"{settings.max_new_tokens}); seqlen={need_longer_than} windows need longer ones: "
            "raise calib_gen_tokens or lower seqlen"
        )
    if model is None:
        raise ValueError("self: calibration needs the dense model to generate its traces (pass model=)")
    key = {
        "format": CACHE_FORMAT,
        "model": model_key or model_fingerprint(model),
        "prompts_sha256": prompts.sha256,
        "chat_template_sha256": hashlib.sha256(str(getattr(tokenizer, "chat_template", "")).encode()).hexdigest(),
        "settings": settings.key(),
        "device": next(model.parameters()).device.type if model is not None else None,  # CUDA and CPU greedy diverge
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{name}.json" if cache_dir is not None else None
    stored = _read_cache(path, prompts) if path is not None else None
    if stored is not None:
        traces, seconds, status = stored["traces"], stored["seconds"], "hit"
        log.info("self traces from the cache: %s", path)
    else:
        tick = time.perf_counter()
        completions = generate_hf(model, tokenizer, prompts.ids, settings)
        seconds = time.perf_counter() - tick
        traces = [
            {
                "prompt": text,
                "completion": tokenizer.decode(done, skip_special_tokens=False),
                "prompt_ids": ids,
                "completion_ids": done,
            }
            for text, ids, done in zip(prompts.texts, prompts.ids, completions, strict=True)
        ]
        status = "disabled"
        if path is not None:
            _write_cache(
                path, {"key": key, "seconds": seconds, "traces_sha256": traces_digest(traces), "traces": traces}
            )
            status = "generated"
    docs = Documents([t["prompt"] + t["completion"] for t in traces], prompts.templated)
    docs.ids.update({i: t["prompt_ids"] + t["completion_ids"] for i, t in enumerate(traces)})
    docs.info = {
        "kind": "self",
        "records": len(traces),
        "prompts_sha256": prompts.sha256,
        "traces_sha256": traces_digest(traces),
        "generated_tokens": sum(len(t["completion_ids"]) for t in traces),
        "generation": {**asdict(settings), "do_sample": settings.sampling, "chat_template": prompts.templated},
        "generation_seconds": round(float(seconds), 3),
        "model_key": key["model"],
        "cache": status,
        "cache_file": str(path) if path is not None else None,
    }
    return docs


def _read_cache(path: Path, prompts: Prompts) -> dict[str, Any] | None:
    """A cache file's content when it is whole and matches the prompts; else None (generated again)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        traces = data["traces"]
        ok = traces_digest(traces) == data["traces_sha256"] and [t["prompt_ids"] for t in traces] == prompts.ids
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("self traces cache %s is damaged (%s); generating again", path, type(exc).__name__)
        return None
    if not ok:
        log.warning("self traces cache %s does not match its prompts; generating again", path)
        return None
    return {"traces": traces, "seconds": float(data.get("seconds", 0.0))}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file; two writers leave one whole file)."""
    write_atomically(path, json.dumps(data))
