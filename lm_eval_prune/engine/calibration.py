"""Calibration tokens: text, JSONL, token-id files, reasoning traces or Hub sets -> ``LongTensor[nsamples, seqlen]``.

Every unusable source fails with one line naming it and what to do: :func:`check_source` before any weights
load (cheap: no tokenizer), the loaders for what only reading the whole file shows. Tokenizing a text source is
memoised in-process per (tokenizer, file, size, mtime): pruning and LayerIF's train/val draws share one pass.

Document sources (JSONL records, ``s1k``, ``traces:PATH``, ``self:PROMPTS``; see :mod:`.traces`) give seeded
C4-style windows to :func:`load_calibration` and one truncated sample per record to :func:`load_records` (LayerIF).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_prune.engine.config import HUB_CALIBRATION_SETS, TEXT_FILE_SUFFIXES, TOKEN_FILE_SUFFIXES, PruneConfig
from lm_eval_prune.engine.traces import Documents, documents_from_records, parquet_fields, read_records, record_kind
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import file_sha256, write_atomically

C4_REPO = "allenai/c4"
C4_SHARD = "en/c4-train.00000-of-01024.json.gz"
S1K_REPO = "simplescaling/s1K-1.1"
HEAD_BYTES = 1 << 16  # how much of a file check_source reads
FIRST_RECORD_BYTES = 1 << 26  # how much of a JSONL file's first line check_source reads for its fields
TRACE_SUFFIXES = (".jsonl", ".parquet")
LOCAL_SOURCE_HINT = "or pass a local .txt, .jsonl, .pt or .npy file as calibration=PATH"
S1K_HINT = f"datasets.load_dataset({S1K_REPO!r}), or pass a local JSONL or parquet copy as calibration=traces:PATH"
MEMO_ENTRIES = 4
# (id(tokenizer), source...) -> (tokenizer, tokens); holding the tokenizer keeps its id from being reused.
_TOKENIZED: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()


def check_source(name: str, value: str, trace_field: str = "") -> None:
    """Setting ``name``'s source ``value``: a Hub set name, or a file that exists, is of its kind, readable, non-empty;
    a JSONL or trace file's first record has fields this package can read (``trace_field`` when set).

    Reads at most :data:`HEAD_BYTES` (the first JSONL line in full); no tokenizer. Hub sets are checked when they load.
    """
    if not value:
        return
    scores = name == "layerif_scores"
    if not scores and value in HUB_CALIBRATION_SETS:
        return
    prefix = next((p for p in ("traces:", "self:") if value.startswith(p) and not scores), "")
    path = Path(value[len(prefix) :])
    if prefix:
        allowed: tuple[str, ...] = TRACE_SUFFIXES if prefix == "traces:" else (".jsonl",)
        if path.suffix not in allowed:
            raise PruneConfigError(f"{name}={value!r} is not allowed; a {prefix} file ends in {' or '.join(allowed)}")
    else:
        allowed = (".json", ".npy") if scores else TEXT_FILE_SUFFIXES + TOKEN_FILE_SUFFIXES
        if path.suffix not in allowed:
            hub = "" if scores else f"{', '.join(HUB_CALIBRATION_SETS)}, traces:PATH, self:PROMPTS or "
            raise PruneConfigError(f"{name}={value!r} is not allowed; use {hub}a path ending in {', '.join(allowed)}")
    what = f"{name} file {str(path)!r}"
    if not path.exists():
        raise PruneConfigError(f"{what} does not exist")
    if not path.is_file():
        raise PruneConfigError(f"{what} is a directory, not a {path.suffix} file")
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise PruneConfigError(
            f"{what} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions"
        ) from None
    if not head:
        raise PruneConfigError(f"{what} is empty")
    if path.suffix == ".parquet":
        record_kind(parquet_fields(path, what), trace_field, what, traces_only=True)
        return
    problem = _kind_problem(path.suffix, head, complete=len(head) < HEAD_BYTES)
    if problem:
        raise PruneConfigError(f"{what} {problem}")
    if path.suffix == ".jsonl" and not scores:
        fields = _first_record_fields(path, what)
        if fields is None:
            return
        if prefix == "self:":
            from lm_eval_prune.engine.self_traces import prompt_field

            prompt_field(fields, what)
        else:
            record_kind(fields, trace_field, what, traces_only=prefix == "traces:")


def _first_record_fields(path: Path, what: str) -> list[str] | None:
    """Field names of a JSONL file's first record (None: its first line is too long to check here)."""
    with path.open("rb") as handle:
        for raw in handle:
            if len(raw) > FIRST_RECORD_BYTES:
                return None
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                raise PruneConfigError(f"{what} starts with a line that is not a JSON object")
            return sorted(record)
    raise PruneConfigError(f"{what} holds no records (only blank lines)")


def _kind_problem(suffix: str, head: bytes, complete: bool) -> str | None:
    """What is wrong with a file of ``suffix`` that starts with ``head`` (None: nothing seen)."""
    if suffix == ".npy":
        return (
            None if head.startswith(b"\x93NUMPY") else "is not a NumPy .npy file; write it with numpy.save(path, ids)"
        )
    if suffix == ".pt":  # torch.save: a zip archive, or the legacy format (a pickle)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            return None
        return "is not a torch.save file; write it with torch.save(ids, path), ids a 2-D integer tensor"
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, head.index(b"\x00"), head.index(b"\x00") + 1, "NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (binary data at byte {exc.start}); give a UTF-8 {suffix} file"
    return None


@dataclass
class CalibrationTokens:
    """Token ids of a source and what the report records about it (source, kind, hashes, generation settings)."""

    ids: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordSamples:
    """One sample per record (LayerIF): ``ids[i, :lengths[i]]`` is record i truncated to ``seqlen``; positions past
    its length hold ``pad_id`` and must be left out of any loss (right padding: causal attention never sees them)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    pad_id: int
    info: dict[str, Any] = field(default_factory=dict)


def load_calibration(
    config: PruneConfig,
    tokenizer: Any,
    *,
    model: Any = None,
    cache_dir: Path | None = None,
    model_key: str | None = None,
) -> torch.Tensor:
    """The ``[nsamples, seqlen]`` token ids ``config.calibration`` names, deterministic for ``config.seed``.

    ``model`` (the dense model), ``cache_dir`` (where its traces are kept) and ``model_key`` (its identity) serve
    ``self:PROMPTS`` only; see :func:`calibration_tokens` for what the report records.
    """
    return calibration_tokens(config, tokenizer, model=model, cache_dir=cache_dir, model_key=model_key).ids


def calibration_tokens(
    config: PruneConfig,
    tokenizer: Any,
    *,
    model: Any = None,
    cache_dir: Path | None = None,
    model_key: str | None = None,
) -> CalibrationTokens:
    """:func:`load_calibration`'s ids with their provenance (``info``)."""
    source = config.calibration
    info: dict[str, Any] = {"source": source}
    if source in ("c4", "wikitext2"):
        encode = _encoder(tokenizer)
        if source == "c4":  # not memoised: the shard's texts are ~1 GB; only the drawn documents are tokenized
            texts = _hub("c4", _hub_c4_texts)
            return CalibrationTokens(
                sample_documents(texts, encode, config.nsamples, config.seqlen, config.seed, "c4"), info
            )
        ids = _memoised(tokenizer, ("wikitext2",), lambda: _as_ids(encode(_hub("wikitext2", _hub_wikitext2_text))))
        return CalibrationTokens(sample_stream(ids, config.nsamples, config.seqlen, config.seed, "wikitext2"), info)
    if is_document_source(source):
        docs = documents(config, tokenizer, model=model, cache_dir=cache_dir, model_key=model_key)
        ids = sample_documents(
            docs.texts, _doc_encoder(tokenizer, docs), config.nsamples, config.seqlen, config.seed, source, docs.ids
        )
        return CalibrationTokens(ids, {**info, **docs.info})
    check_source("calibration", source)
    path = Path(source)
    info["file_sha256"] = file_sha256(path)
    if path.suffix in (".pt", ".npy"):
        ids = load_token_file(path, config.nsamples, config.seqlen, vocab_size=_vocab_size(tokenizer))
        return CalibrationTokens(ids, info)
    encode = _encoder(tokenizer)
    tokens_dir = cache_dir.parent / "tokens" if cache_dir is not None else None

    def tokenize() -> torch.Tensor:
        return _on_disk(tokens_dir, tokenizer, info["file_sha256"], lambda: _as_ids(encode(read_text(path))))

    stream = _memoised(tokenizer, _file_key(path), tokenize)
    return CalibrationTokens(sample_stream(stream, config.nsamples, config.seqlen, config.seed, str(path)), info)


def _tokenizer_digest(tokenizer: Any) -> str | None:
    """The tokenizer's full definition, hashed (fast tokenizers only; None: do not cache on disk)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    extra = json.dumps([getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None)])
    return hashlib.sha256((backend.to_str() + extra).encode()).hexdigest()[:16]


def _on_disk(
    folder: Path | None, tokenizer: Any, content_sha256: str, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """A tokenized text stream kept as ``.npy`` under the prune cache, keyed by the text's and tokenizer's hashes.

    Tokenizing War and Peace takes seconds on every run otherwise; a damaged file is recomputed, never trusted.
    """
    import numpy as np

    digest = _tokenizer_digest(tokenizer)
    if folder is None or digest is None:
        return compute()
    path = folder / f"{content_sha256[:16]}-{digest}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError):
            pass
    ids = compute()
    try:
        largest = int(ids.max()) if ids.numel() else 0
        array = ids.numpy().astype(np.int32 if largest < 2**31 else np.int64)

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.save(handle, array)

        write_atomically(path, save)
    except OSError:  # a read-only cache only costs the speed-up
        pass
    return ids


def is_document_source(source: str) -> bool:
    """Sources made of records (one LayerIF sample each): JSONL files, ``s1k``, ``traces:PATH``, ``self:PROMPTS``."""
    return (
        source == "s1k"
        or source.startswith(("traces:", "self:"))
        or (source not in HUB_CALIBRATION_SETS and Path(source).suffix == ".jsonl")
    )


def documents(
    config: PruneConfig,
    tokenizer: Any,
    *,
    model: Any = None,
    cache_dir: Path | None = None,
    model_key: str | None = None,
) -> Documents:
    """The rendered records of a document source (memoised per tokenizer and file version)."""
    source, trace_field = config.calibration, config.trace_field
    if tokenizer is None:
        raise PruneConfigError(f"calibration {source!r} is text and needs a tokenizer")
    if source == "s1k":
        return _memoised(
            tokenizer,
            ("s1k", trace_field),
            lambda: documents_from_records(
                _hub("s1k", _hub_s1k_records, S1K_HINT), tokenizer, trace_field, "s1k", True
            ),
        )
    check_source("calibration", source, trace_field)
    if source.startswith("self:"):
        return _self_documents(config, tokenizer, model, cache_dir, model_key)
    traces = source.startswith("traces:")
    path = Path(source.removeprefix("traces:"))
    what = f"calibration file {str(path)!r}"

    def read() -> Documents:
        docs = documents_from_records(read_records(path, what), tokenizer, trace_field, what, traces)
        docs.info["file_sha256"] = file_sha256(path)
        return docs

    return _memoised(tokenizer, ("records", *_file_key(path), trace_field, traces), read)


def _self_documents(
    config: PruneConfig, tokenizer: Any, model: Any, cache_dir: Path | None, model_key: str | None
) -> Documents:
    from lm_eval_prune.engine.self_traces import GenerationSettings, self_traces

    path = Path(config.calibration.removeprefix("self:"))
    settings = GenerationSettings(
        max_new_tokens=config.calib_gen_tokens, seed=config.seed, batch_size=config.calib_batch_size
    )
    key = ("self", *_file_key(path), model_key or id(model), str(cache_dir), settings)
    return _memoised(
        tokenizer,
        key,
        lambda: self_traces(model, tokenizer, path, settings, cache_dir, model_key, need_longer_than=config.seqlen),
    )


def load_records(
    config: PruneConfig,
    tokenizer: Any,
    *,
    model: Any = None,
    cache_dir: Path | None = None,
    model_key: str | None = None,
) -> RecordSamples:
    """``config.nsamples`` records of a document source (seeded choice without repetition, in file order), one sample
    each, truncated to ``config.seqlen`` and right-padded to the longest; no random windows."""
    source = config.calibration
    if not is_document_source(source):
        raise PruneConfigError(
            f"calibration {source!r} is not a record source; use a .jsonl file, s1k, traces:PATH or self:PROMPTS"
        )
    docs = documents(config, tokenizer, model=model, cache_dir=cache_dir, model_key=model_key)
    if len(docs.texts) < config.nsamples:
        raise PruneConfigError(
            f"calibration {source!r} holds {len(docs.texts)} usable records; {config.nsamples} samples "
            "(one per record) ask for at least as many: lower the sample count or give more records"
        )
    chosen = sorted(random.Random(config.seed).sample(range(len(docs.texts)), config.nsamples))
    encode = _doc_encoder(tokenizer, docs)
    rows = []
    for index in chosen:
        ids = docs.ids.get(index)
        if ids is None:
            ids = docs.ids[index] = encode(docs.texts[index])
        if len(ids) < 2:
            raise PruneConfigError(f"calibration {source!r} record {index + 1} has {len(ids)} token; a sample needs 2")
        rows.append(ids[: config.seqlen])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    out = torch.full((len(rows), width), int(pad), dtype=torch.long)
    for row, ids in enumerate(rows):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return RecordSamples(out, lengths, int(pad), {"source": source, **docs.info, "record_indices": chosen})


def _doc_encoder(tokenizer: Any, docs: Documents) -> Callable[[str], list[int]]:
    """Templated texts already hold the template's special tokens (a BOS included): add none."""
    if not docs.templated:
        return _encoder(tokenizer)
    return lambda text: list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def read_text(path: Path) -> str:
    """A UTF-8 text file with ``\\n`` line ends; one line of error otherwise."""
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise PruneConfigError(
            f"calibration file {str(path)!r} is not UTF-8 text (byte {exc.start}); give a UTF-8 .txt file"
        ) from None


def _file_key(path: Path) -> tuple[Any, ...]:
    """A file's identity for the memo: a changed file (size or mtime) is tokenized again."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _as_ids(ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def _memoised(tokenizer: Any, source: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()`` once per (tokenizer object, source) in this process; the last few results are kept."""
    key = (id(tokenizer), *source)
    entry = _TOKENIZED.get(key)
    if entry is not None and entry[0] is tokenizer:
        _TOKENIZED.move_to_end(key)
        return entry[1]
    value = compute()
    _TOKENIZED[key] = (tokenizer, value)
    while len(_TOKENIZED) > MEMO_ENTRIES:
        _TOKENIZED.popitem(last=False)
    return value


def tokens_digest(ids: torch.Tensor) -> str:
    """Content hash of calibration tokens (part of every cache key)."""
    cpu = ids.detach().to(device="cpu", dtype=torch.int64).contiguous()  # .numpy() needs a CPU tensor
    return hashlib.sha256(cpu.numpy().tobytes()).hexdigest()[:16]


def sample_stream(ids: Sequence[int], nsamples: int, seqlen: int, seed: int, name: str) -> torch.Tensor:
    """WikiText-style windows of one long token stream: ``i = randint(0, n - seqlen - 1)``, take ``[i, i+seqlen)``."""
    n = len(ids)
    if n <= seqlen or n < nsamples * seqlen:
        raise PruneConfigError(
            f"calibration {name!r} has {n} tokens; "
            f"nsamples*seqlen = {nsamples}*{seqlen} needs at least {nsamples * seqlen}"
        )
    rng = random.Random(seed)
    stream = torch.as_tensor(ids, dtype=torch.long)
    rows = []
    for _ in range(nsamples):
        start = rng.randint(0, n - seqlen - 1)
        rows.append(stream[start : start + seqlen])
    return torch.stack(rows)


def sample_documents(
    docs: Sequence[str],
    encode: Callable[[str], list[int]],
    nsamples: int,
    seqlen: int,
    seed: int,
    name: str,
    cache: dict[int, list[int]] | None = None,
) -> torch.Tensor:
    """C4-style (Wanda ``get_c4``): draw random documents until one has over ``seqlen`` tokens, take a random window.

    ``cache`` (document index -> ids) may be shared by calls with the same documents and tokenizer.
    """
    if not docs:
        raise PruneConfigError(f"calibration {name!r} holds no documents")
    rng = random.Random(seed)
    cache = {} if cache is None else cache
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


def load_token_file(path: Path, nsamples: int, seqlen: int, vocab_size: int | None = None) -> torch.Tensor:
    """Token ids saved with ``torch.save`` (.pt) or ``numpy.save`` (.npy), used as is."""
    how = "numpy.save(path, ids)" if path.suffix == ".npy" else "torch.save(ids, path)"
    try:
        if path.suffix == ".npy":
            import numpy as np

            ids = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            ids = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled objects: torch and numpy raise many kinds
        raise PruneConfigError(
            f"calibration file {str(path)!r} cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); "
            f"write a 2-D integer tensor [nsamples, seqlen] with {how}"
        ) from None
    if not isinstance(ids, torch.Tensor):
        raise PruneConfigError(
            f"calibration file {str(path)!r} holds a {type(ids).__name__}, not a tensor; "
            f"write a 2-D integer tensor [nsamples, seqlen] with {how}"
        )
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise PruneConfigError(
            f"calibration file {str(path)!r} holds a {ids.dim()}-D {ids.dtype} tensor; "
            f"it must be a 2-D integer tensor [nsamples, seqlen]"
        )
    if tuple(ids.shape) != (nsamples, seqlen):
        raise PruneConfigError(
            f"calibration file {str(path)!r} has shape {tuple(ids.shape)}; "
            f"nsamples={nsamples}, seqlen={seqlen} ask for ({nsamples}, {seqlen})"
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


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub(name: str, load: Callable[[], Any], hint: str = LOCAL_SOURCE_HINT) -> Any:
    """A Hub calibration set, or one line saying why not and what to do instead."""
    try:
        return load()
    except Exception as exc:  # datasets raises connection, offline, missing-file and cache errors of many types
        offline = [
            v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")
        ]
        why = f"{' and '.join(offline)} set and no cached copy" if offline else "no network or no cached copy"
        raise PruneConfigError(
            f"calibration {name!r} cannot be loaded from the Hub ({why}; {type(exc).__name__}: {_first_line(exc)}); "
            f"download it once with network access, {hint}"
        ) from None


def _hub_c4_texts() -> list[str]:
    from datasets import load_dataset

    data = load_dataset(C4_REPO, data_files={"train": C4_SHARD}, split="train")
    return data["text"]


def _hub_wikitext2_text() -> str:
    from datasets import load_dataset

    data = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
    return " ".join(data["text"])


def _hub_s1k_records() -> list[dict[str, Any]]:
    from datasets import load_dataset

    return list(load_dataset(S1K_REPO, split="train"))
