"""`PruneConfig`: every prune setting, validated once (values only: it never touches files), serialised everywhere.

Files named by settings are checked by ``store.pipeline.check_sources`` before anything loads, so a report's config
can be rebuilt on a machine that has none of the original files (``publish``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lm_eval_prune.engine.methods import ALLOCATORS, METHODS, MethodSpec, owner_of
from lm_eval_prune.errors import PruneConfigError

HUB_CALIBRATION_SETS = ("c4", "wikitext2", "s1k")
SOURCE_PREFIXES = ("traces:", "self:")  # a reasoning-trace file, or prompts the dense model answers itself
TOKEN_FILE_SUFFIXES = (".pt", ".npy")
TEXT_FILE_SUFFIXES = (".txt", ".jsonl")
_NM_RE = re.compile(r"^(\d+):(\d+)$")

# Fields that change how the work runs but not which weights come out (excluded from the identity). The device and
# the calibration batch size DO change the bytes (float rounding of other kernels), so they are part of the identity.
EXECUTION_FIELDS = frozenset({"offload"})
SOURCE_FIELDS = ("calibration", "layerif_train", "layerif_val", "layerif_scores")
ShortGPTMode = Literal["bi", "tail"]
SHORTGPT_MODES: tuple[ShortGPTMode, ...] = ("bi", "tail")
LAYERIF_HESSIANS = ("identity", "datainf")
LAYERIF_MODULES = ("attn", "all")
SPARSITY_DEFAULT = 0.5
CALIB_GEN_TOKENS_DEFAULT = 1024
MAX_SEED = 2**32 - 1  # what every seeded generator here accepts (NumPy's is the narrowest)


@dataclass(frozen=True)
class PruneConfig:
    """All settings of one prune. Construct it directly or with :meth:`from_model_args`."""

    method: str = field(default="wanda", metadata={"help": "pruning method: " + ", ".join(METHODS.names())})
    alloc: str = field(default="uniform", metadata={"help": "layer-wise allocation: " + ", ".join(ALLOCATORS.names())})
    sparsity: float = field(
        default=SPARSITY_DEFAULT, metadata={"help": "target fraction of block-linear weights zeroed, in [0, 1)"}
    )
    pattern: str = field(default="unstructured", metadata={"help": "'unstructured' or N:M such as 2:4, 4:8"})
    calibration: str = field(
        default="c4",
        metadata={"help": "c4, wikitext2, s1k, traces:PATH, self:PROMPTS.jsonl, or a .txt/.jsonl/.pt/.npy path"},
    )
    trace_field: str = field(
        default="", metadata={"help": "reasoning-trace sources: the trajectory field (default: detected)"}
    )
    calib_gen_tokens: int = field(
        default=CALIB_GEN_TOKENS_DEFAULT, metadata={"help": "self:PROMPTS: tokens generated per trace"}
    )
    nsamples: int = field(default=128, metadata={"help": "calibration sequences"})
    seqlen: int = field(default=2048, metadata={"help": "tokens per calibration sequence"})
    seed: int = field(default=0, metadata={"help": "seed of the calibration sampling"})
    owl_m: float = field(default=5.0, metadata={"help": "OWL outlier threshold M (score > M * mean)"})
    owl_lambda: float = field(default=0.08, metadata={"help": "OWL spread lambda (sparsities span 2*lambda)"})
    layerif_eps: float = field(
        default=0.3, metadata={"help": "LayerIF: sparsity ratios span [1-eps, 1+eps] around the target"}
    )
    layerif_scores: str = field(
        default="", metadata={"help": "LayerIF: a score file (JSON list or .npy, one value per block)"}
    )
    layerif_train: str = field(
        default="", metadata={"help": "LayerIF: training text source (default: the calibration source)"}
    )
    layerif_val: str = field(
        default="", metadata={"help": "LayerIF: validation text source (default: the calibration source, seed+1)"}
    )
    layerif_hessian: str = field(
        default="identity", metadata={"help": "LayerIF estimator: identity (TracIn-like) or datainf (LayerIF's own)"}
    )
    layerif_modules: str = field(
        default="all", metadata={"help": "LayerIF tensors: attn (q/k/v/o, as LayerIF) or all (attention + MLP)"}
    )
    layerif_nsamples: int = field(default=128, metadata={"help": "LayerIF: training samples (one backward each)"})
    layerif_val_nsamples: int = field(default=32, metadata={"help": "LayerIF: validation samples"})
    layerif_seqlen: int = field(default=128, metadata={"help": "LayerIF: tokens per sample"})
    alpha_eps: float = field(  # 0.3: the AlphaPruning reference's argparse default (its scripts use 0.2)
        default=0.3, metadata={"help": "AlphaPruning: sparsity ratios span [1-eps, 1+eps] around the target"}
    )
    percdamp: float = field(default=0.01, metadata={"help": "SparseGPT: dampening, a fraction of mean(diag H)"})
    blocksize: int = field(default=128, metadata={"help": "SparseGPT: columns per lazy-update block"})
    drop_layers: int = field(default=0, metadata={"help": "ShortGPT: number of decoder blocks to remove"})
    shortgpt_mode: str = field(
        default="bi", metadata={"help": "ShortGPT: 'bi' (lowest Block Influence) or 'tail' (the last blocks)"}
    )
    calib_batch_size: int = field(default=8, metadata={"help": "calibration sequences per forward"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    offload: bool = field(default=False, metadata={"help": "keep only the block in work on the device"})

    def __post_init__(self) -> None:
        self.method_spec  # noqa: B018  (unknown method: one-line error)
        self.alloc_spec  # noqa: B018
        for name in ("sparsity", "owl_m", "owl_lambda", "layerif_eps", "alpha_eps", "percdamp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PruneConfigError(f"{name}={value!r} must be a finite number")
        if not 0.0 <= self.sparsity < 1.0:
            raise PruneConfigError(f"sparsity={self.sparsity!r} is outside [0, 1)")
        if self.pattern != "unstructured":
            match = _NM_RE.match(self.pattern)
            if not match or not 0 < int(match[1]) < int(match[2]):
                raise PruneConfigError(
                    f"pattern={self.pattern!r} is not allowed; use 'unstructured' or N:M with 0<N<M (2:4, 4:8)"
                )
            if self.alloc != "uniform":
                raise PruneConfigError(
                    f"pattern={self.pattern!r} needs alloc=uniform (N:M fixes the sparsity at N/M), "
                    f"not alloc={self.alloc!r}"
                )
        for name in (
            "nsamples",
            "seqlen",
            "calib_batch_size",
            "layerif_nsamples",
            "layerif_val_nsamples",
            "layerif_seqlen",
            "blocksize",
            "calib_gen_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PruneConfigError(f"{name}={value!r} must be an integer >= 1")
        if self.percdamp <= 0:
            raise PruneConfigError(f"percdamp={self.percdamp!r} must be > 0")
        if self.owl_m <= 0:
            raise PruneConfigError(f"owl_m={self.owl_m!r} must be > 0")
        if not 0 <= self.owl_lambda < 0.5:
            raise PruneConfigError(f"owl_lambda={self.owl_lambda!r} must be in [0, 0.5)")
        for name in ("layerif_eps", "alpha_eps"):
            if not 0 <= getattr(self, name) < 1:
                raise PruneConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        for name, allowed in (("layerif_hessian", LAYERIF_HESSIANS), ("layerif_modules", LAYERIF_MODULES)):
            if getattr(self, name) not in allowed:
                raise PruneConfigError(f"{name}={getattr(self, name)!r} is not allowed; use {' or '.join(allowed)}")
        if self.shortgpt_mode not in SHORTGPT_MODES:
            raise PruneConfigError(
                f"shortgpt_mode={self.shortgpt_mode!r} is not allowed; use {' or '.join(SHORTGPT_MODES)}"
            )
        if not isinstance(self.drop_layers, int) or self.drop_layers < 0:
            raise PruneConfigError(f"drop_layers={self.drop_layers!r} must be an integer >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise PruneConfigError(f"seed={self.seed!r} must be an integer in [0, {MAX_SEED}]")
        self._check_owned_settings()
        self._check_source_settings()
        spec = self.method_spec
        if (spec.dense or spec.structured) and self.sparsity not in (SPARSITY_DEFAULT, 0.0):
            raise PruneConfigError(
                f"sparsity={self.sparsity!r} does not apply to method={self.method}"
                + (" (it removes drop_layers whole blocks)" if spec.structured else " (nothing is pruned)")
            )
        if self.method_spec.structured:
            if self.drop_layers < 1:
                raise PruneConfigError(f"drop_layers={self.drop_layers!r} must be >= 1 for method={self.method!r}")
            if self.alloc != "uniform" or self.pattern != "unstructured":
                raise PruneConfigError(
                    f"method={self.method!r} removes whole blocks; it takes no alloc or pattern "
                    f"(got alloc={self.alloc!r}, pattern={self.pattern!r})"
                )
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            raise PruneConfigError(f"device={self.device!r} is not allowed; use auto, cpu, cuda or cuda:N")
        for name in SOURCE_FIELDS:
            _check_source_name(name, getattr(self, name))

    def _check_owned_settings(self) -> None:
        """A setting that belongs to another method or allocation than the chosen ones is refused, whatever it is."""
        chosen = {f"method={self.method}", f"alloc={self.alloc}"}
        for item in fields(self):
            value = getattr(self, item.name)
            owner = owner_of(item.name)
            if owner is not None and owner not in chosen and value != item.default:
                raise PruneConfigError(
                    f"{item.name}={value!r} applies to {owner} only; "
                    f"this run has method={self.method}, alloc={self.alloc}"
                )

    def _check_source_settings(self) -> None:
        """``trace_field`` needs a source with records (.jsonl, traces:, self:, s1k); ``calib_gen_tokens`` needs a
        ``self:`` source. Given without one they would be ignored silently."""
        sources = [
            getattr(self, name) for name in ("calibration", "layerif_train", "layerif_val") if getattr(self, name)
        ]
        if self.trace_field and not any(
            s == "s1k" or s.startswith(SOURCE_PREFIXES) or Path(s).suffix == ".jsonl" for s in sources
        ):
            raise PruneConfigError(
                f"trace_field={self.trace_field!r} applies to record sources only (a .jsonl file, traces:PATH, "
                f"self:PATH or s1k); this run has calibration={self.calibration!r}"
            )
        if self.calib_gen_tokens != CALIB_GEN_TOKENS_DEFAULT and not any(s.startswith("self:") for s in sources):
            raise PruneConfigError(
                f"calib_gen_tokens={self.calib_gen_tokens!r} applies to self:PROMPTS sources only; "
                f"this run has calibration={self.calibration!r}"
            )

    @property
    def method_spec(self) -> MethodSpec:
        return METHODS.get(self.method)

    @property
    def alloc_spec(self) -> Any:
        return ALLOCATORS.get(self.alloc)

    # ----------------------------------------------------------------- derived facts
    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        match = _NM_RE.match(self.pattern)
        return (int(match[1]), int(match[2])) if match else None

    @property
    def effective_sparsity(self) -> float:
        """The sparsity each matrix gets under uniform allocation (N/M for N:M)."""
        if self.method_spec.kind != "unstructured":
            return 0.0
        nm = self.nm
        return nm[0] / nm[1] if nm else self.sparsity

    @property
    def is_dense(self) -> bool:
        """Nothing will be removed or zeroed (``method=none``, or sparsity 0 with an unstructured method)."""
        spec = self.method_spec
        return spec.dense or (spec.kind == "unstructured" and self.effective_sparsity == 0.0)

    @property
    def needs_calibration(self) -> bool:
        if self.method_spec.structured:
            return self.shortgpt_mode == "bi"
        if self.is_dense:
            return False
        return self.method_spec.uses_activations or self.alloc_spec.needs_activations

    @property
    def computes_layer_scores(self) -> bool:
        """Per-block scores are computed from text (LayerIF without a score file): they read the text sources."""
        return self.alloc_spec.layer_scores and not self.layerif_scores

    @property
    def reads_calibration_source(self) -> bool:
        """The calibration source is read: for calibration forwards, or as LayerIF's default training text."""
        return self.needs_calibration or self.computes_layer_scores

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity_settings(self) -> dict[str, Any]:
        """The settings that decide the pruned weights (everything but execution-only fields)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PruneConfig:
        """Build from strings or loosely typed values (CLI, lm-eval model args), coercing each to its field type."""
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise PruneConfigError(f"unknown prune setting {unknown[0]!r}; allowed: {', '.join(cls.keys())}")
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    @classmethod
    def from_model_args(
        cls, model_args: dict[str, Any], passthrough: frozenset[str] = frozenset()
    ) -> tuple[PruneConfig, dict[str, Any]]:
        """Take this package's keys out of lm-eval ``model_args``; return (config, the rest).

        A key that is not ours, not in ``passthrough`` and close to one of ours (``metod``) is an error.
        """
        ours = {k: v for k, v in model_args.items() if k in cls.keys() and k not in passthrough}
        rest = {k: v for k, v in model_args.items() if k not in ours}
        for key in rest:
            if key in passthrough:
                continue
            close = difflib.get_close_matches(key, cls.keys(), n=1, cutoff=0.75)
            if close:
                raise PruneConfigError(
                    f"unknown model arg {key!r} (did you mean {close[0]!r}?); prune keys: {', '.join(cls.keys())}"
                )
        return cls.from_mapping(ours), rest


def _check_source_name(name: str, source: str) -> None:
    """A source's form: a Hub set, a prefixed or a plain path of a known kind ('' = unset); files are checked later."""
    if not source:
        return
    if name == "layerif_scores":
        if Path(source).suffix not in (".json", ".npy"):
            raise PruneConfigError(f"layerif_scores={source!r} must be a .json or .npy file")
        return
    if source in HUB_CALIBRATION_SETS:
        return
    prefix = next((p for p in SOURCE_PREFIXES if source.startswith(p)), None)
    if prefix is not None:
        if not source[len(prefix) :].strip():
            raise PruneConfigError(f"{name}={source!r} needs a path after {prefix!r}")
        return
    if Path(source).suffix not in TEXT_FILE_SUFFIXES + TOKEN_FILE_SUFFIXES:
        allowed = ", ".join(TEXT_FILE_SUFFIXES + TOKEN_FILE_SUFFIXES)
        raise PruneConfigError(
            f"{name}={source!r} is not allowed; use {', '.join(HUB_CALIBRATION_SETS)} or a path ending in {allowed}"
        )


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` to the type of field ``name``; one-line error when it cannot be."""
    kind = {f.name: f.type for f in fields(PruneConfig)}[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return _BOOL_WORDS[str(value).strip().lower()]
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, (str, float)) and float(value).is_integer() else int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return "none" if value is None else str(value)  # lm-eval parses `method=none` into None
    except (ValueError, KeyError, TypeError):
        raise PruneConfigError(f"{name}={value!r} is not a valid {kind}") from None
