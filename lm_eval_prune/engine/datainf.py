"""LayerIF's original influence estimator (DataInf) per decoder block, from per-sample gradient factors.

DataInf (Kwon et al., the estimator LayerIF's code uses) replaces the inverse Hessian of each weight tensor ``w`` by a
closed form over the per-sample training gradients ``g_i``::

    lambda_w = mean_i(mean(g_i^2)) / 10
    hvp_w(v) = sum_i [g_v - <g_v, g_i> / (lambda_w + ||g_i||^2) * g_i] / (n * lambda_w)
    IF(z_i, v) = -sum_w <hvp_w(v), g_i>,      S_l = sum_i max(0, sum_v IF(z_i, v))

``hvp_w`` is linear in ``g_v``, so summing over validation samples first is exact: only the summed validation gradient
``G_w`` is needed. Everything else is inner products of per-sample training gradients: the Gram matrix
``K_w[i, j] = <g_i, g_j>`` and ``a_w[i] = <G_w, g_i>``. A linear's per-sample gradient over one sequence is
``sum_t delta_t x_t^T``, so ``K_w`` comes from the T x d factors (input ``x``, output gradient ``delta``) that hooks
capture, without ever forming a d_out x d_in gradient per sample. Factors of up to ``bank`` training samples are kept
(in the model's dtype, which loses nothing: they are the values the backward produced); when the training set does not
fit, later samples are re-run against each stored chunk, so memory stays bounded and the result is the same.
Small tensors the original also takes (linear biases; Qwen3's q_norm/k_norm weights under ``self_attn``) are kept as
whole per-sample gradient vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)

Modules = Literal["attn", "all"]
Estimator = Literal["datainf", "identity"]
LAMBDA_CONST = 10.0  # DataInf's lambda_const_param: lambda_w = mean(g^2) / 10
_GIB = 1024**3


# ------------------------------------------------------------------------------------------------ pure maths
def datainf_influence(
    gram: torch.Tensor, val_dot: torch.Tensor, numel: Sequence[int], lambda_const: float = LAMBDA_CONST
) -> torch.Tensor:
    """Per-tensor influence ``[n_tensors, n_train]``: ``-<hvp_w(G_w), g_{i,w}>`` from ``K_w`` and ``a_w = <G_w, g_i>``.

    ``gram`` is ``[n_tensors, n, n]``, ``val_dot`` ``[n_tensors, n]``, ``numel`` the element count of each tensor.
    A tensor whose training gradients are all zero (lambda 0) contributes nothing (the original divides by zero).
    """
    n = gram.shape[-1]
    norms = torch.diagonal(gram, dim1=-2, dim2=-1)  # ||g_i||^2
    sizes = torch.tensor([float(s) for s in numel], dtype=gram.dtype, device=gram.device)
    lam = norms.sum(-1) / (n * sizes) / lambda_const  # mean_i(mean(g_i^2)) / 10
    safe = torch.where(lam > 0, lam, torch.ones_like(lam))
    coeff = val_dot / (safe[:, None] + norms)  # <G, g_j> / (lambda + ||g_j||^2)
    hvp_dot = (n * val_dot - torch.einsum("wj,wji->wi", coeff, gram)) / (n * safe[:, None])
    return torch.where(lam[:, None] > 0, -hvp_dot, torch.zeros_like(hvp_dot))


def positive_block_scores(influence: torch.Tensor, block_of: Sequence[int], n_blocks: int) -> list[float]:
    """``S_l = sum_i max(0, IF_l(z_i))``, ``IF_l`` the influence summed over block l's tensors (Our_positive_IF_)."""
    per_block = torch.zeros(n_blocks, influence.shape[-1], dtype=influence.dtype, device=influence.device)
    per_block.index_add_(0, torch.tensor(list(block_of), dtype=torch.long, device=influence.device), influence)
    return [float(v) for v in per_block.clamp(min=0).sum(-1)]


def positive_sample_counts(influence: torch.Tensor, block_of: Sequence[int], n_blocks: int) -> list[int]:
    """Per block, how many training samples have a positive influence (the diagnostic ``layer-scores`` prints)."""
    per_block = torch.zeros(n_blocks, influence.shape[-1], dtype=influence.dtype, device=influence.device)
    per_block.index_add_(0, torch.tensor(list(block_of), dtype=torch.long, device=influence.device), influence)
    return [int(v) for v in (per_block > 0).sum(-1)]


# ------------------------------------------------------------------------------------------------ capture
def _rms_normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x / rms(x)`` as Llama/Qwen RMSNorms compute it before the weight: the weight's gradient is sum delta * this."""
    x32 = x.float()
    eps = float(module.variance_epsilon)  # type: ignore[arg-type]
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class _Capture:
    """Hooks that keep, for the current batch, each linear's input and output gradient and each norm's weight gradient.

    ``vectors`` maps a vector tensor id to its per-sample gradient ``[b, d]``: a linear's bias (``delta`` summed over
    tokens) or an RMSNorm weight (``delta * x_hat`` summed over tokens and heads).
    """

    linears: list[nn.Linear]
    norms: list[nn.Module]
    group_of: list[int] = field(default_factory=list)  # linear -> shared-input group (q/k/v share one input)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # linear -> input [b, T, d_in]
    grads: dict[int, torch.Tensor] = field(default_factory=dict)  # linear -> output gradient [b, T, d_out]
    norm_grads: dict[int, torch.Tensor] = field(default_factory=dict)  # norm -> weight gradient per sample [b, d]
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    def __enter__(self) -> _Capture:
        for index, linear in enumerate(self.linears):
            self.handles.append(linear.register_forward_hook(self._linear_hook(index)))
        for index, norm in enumerate(self.norms):
            self.handles.append(norm.register_forward_hook(self._norm_hook(index)))
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.clear()
        self.inputs.clear()

    def clear(self) -> None:
        self.grads.clear()
        self.norm_grads.clear()

    def _linear_hook(self, index: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.inputs[index] = args[0].detach()
            output.register_hook(lambda grad: self.grads.__setitem__(index, grad.detach()))

        return hook

    def _norm_hook(self, index: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x_hat = _rms_normalised(module, args[0].detach())

            def keep(grad: torch.Tensor) -> None:
                per_sample = (grad.double() * x_hat.double()).reshape(grad.shape[0], -1, grad.shape[-1]).sum(1)
                self.norm_grads[index] = per_sample

            output.register_hook(keep)

        return hook

    def groups(self) -> list[list[int]]:
        """Linears that saw the very same input tensor in the last forward, grouped (first call fixes the grouping)."""
        if not self.group_of:
            seen: dict[tuple[int, tuple[int, ...]], int] = {}
            for index in range(len(self.linears)):
                x = self.inputs[index]
                self.group_of.append(seen.setdefault((x.data_ptr(), tuple(x.shape)), len(seen)))
        members: list[list[int]] = [[] for _ in range(max(self.group_of) + 1)]
        for index, group in enumerate(self.group_of):
            members[group].append(index)
        return members

    def vectors(self, compute: torch.dtype) -> list[torch.Tensor]:
        """Per-sample gradients ``[b, d]`` of the vector tensors: biases of linears that have one, then the norms."""
        out = [self.grads[i].to(compute).sum(1) for i, lin in enumerate(self.linears) if lin.bias is not None]
        return out + [self.norm_grads[i].to(compute) for i in range(len(self.norms))]


def _sequence_losses(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Each sequence's causal-LM loss, as ``model(input_ids, labels=input_ids).loss`` gives it for one sequence
    (right-padded records: only the first ``lengths[i]`` tokens count)."""
    from lm_eval_prune.engine.layer_scores import sequence_losses

    return sequence_losses(model, ids, lengths)


@dataclass
class _Selection:
    """What DataInf looks at, each with its block: linears (weight factors, bias vectors) and attention norm weights."""

    linears: list[nn.Linear]
    linear_block: list[int]
    norms: list[nn.Module]
    norm_block: list[int]


def _select(model: nn.Module, modules: str) -> _Selection:
    """``attn``: every parameter under ``self_attn`` (q, k, v, o weights and biases, Qwen3's q_norm/k_norm), as the
    original's ``'self_attn' in name`` filter takes them; ``all``: that and every MLP linear."""
    if modules not in ("attn", "all"):
        raise PruneConfigError(f"modules={modules!r} is not one of 'attn' (q, k, v, o) or 'all' (attention and MLP)")
    selection = _Selection([], [], [], [])
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            if modules == "all" or "self_attn" in name.split("."):
                selection.linears.append(linear)
                selection.linear_block.append(index)
        attention = getattr(block, "self_attn", None)
        for name, module in attention.named_modules() if attention is not None else []:
            if isinstance(module, nn.Linear) or not any(True for _ in module.parameters(recurse=False)):
                continue
            if not (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")):
                raise PruneConfigError(
                    f"DataInf cannot take the parameters of self_attn.{name} ({type(module).__name__})"
                )
            selection.norms.append(module)
            selection.norm_block.append(index)
    return selection


class _FrozenForFactors:
    """Eval mode, no parameter gradients, and embeddings that require grad so the backward reaches every block."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = [(p, p.requires_grad) for p in model.parameters()]
        self.was_training = model.training
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> None:
        for param, _ in self.saved:
            param.requires_grad_(False)
        self.model.eval()  # the original computes gradients in eval mode
        embeddings: nn.Module = self.model.get_input_embeddings()  # type: ignore[operator]
        self.handle = embeddings.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))

    def __exit__(self, *_exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
        for param, flag in self.saved:
            param.requires_grad_(flag)
        self.model.train(self.was_training)


def _batches(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, stop)) for lo in range(start, stop, size)]


def _pair_dots(x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """Token inner products ``[a, T, b, T]`` of two factor sets ``[a, T, d]`` and ``[b, T, d]``."""
    a, t_a, d = x_a.shape
    b, t_b, _ = x_b.shape
    return (x_a.reshape(a * t_a, d) @ x_b.reshape(b * t_b, d).T).reshape(a, t_a, b, t_b)


def _factor_gram(
    groups: list[list[int]],
    xs_a: list[torch.Tensor],
    ds_a: list[torch.Tensor],
    xs_b: list[torch.Tensor],
    ds_b: list[torch.Tensor],
    compute: torch.dtype,
) -> dict[int, torch.Tensor]:
    """``<g_i, g_j>`` ``[a, b]`` per linear from factors: ``sum_{t,s} (delta_i,t . delta_j,s)(x_i,t . x_j,s)``."""
    out: dict[int, torch.Tensor] = {}
    for group, x_a, x_b in zip(groups, xs_a, xs_b, strict=True):
        px = _pair_dots(x_a.to(compute), x_b.to(compute))
        for index in group:
            out[index] = (px * _pair_dots(ds_a[index].to(compute), ds_b[index].to(compute))).sum((1, 3)).double()
    return out


# ------------------------------------------------------------------------------------------------ the estimator
@torch.no_grad()
def datainf_block_scores(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    modules: Modules | str = "attn",
    batch_size: int = 8,
    *,
    estimator: Estimator | str = "datainf",
    bank_gib: float = 32.0,
    lambda_const: float = LAMBDA_CONST,
    positives: list[int] | None = None,
    train_lengths: torch.Tensor | None = None,
    val_lengths: torch.Tensor | None = None,
) -> list[float]:
    """One LayerIF score per decoder block: ``S_l = sum_i max(0, sum_v IF(z_i, v))`` over ``modules``' tensors.

    ``estimator="datainf"`` is LayerIF's original inverse-HVP approximation; ``"identity"`` replaces the Hessian by the
    identity (``IF = -<G_val, g_i>``, TracIn-like) for comparison. ``bank_gib`` caps the stored training factors; a
    larger training set is processed in chunks (each chunk re-runs the later samples once).
    """
    if estimator not in ("datainf", "identity"):
        raise PruneConfigError(f"estimator={estimator!r} is not one of 'datainf' or 'identity'")
    if train_ids.ndim != 2 or val_ids.ndim != 2 or len(train_ids) == 0 or len(val_ids) == 0:
        raise PruneConfigError(
            f"LayerIF needs [n, seqlen] token ids with n >= 1; got train {tuple(train_ids.shape)}, "
            f"validation {tuple(val_ids.shape)}"
        )
    if batch_size < 1:
        raise PruneConfigError(f"batch_size={batch_size} must be >= 1")
    sel = _select(model, modules)
    linears = sel.linears
    n_blocks = len(decoder_blocks(model))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    n, seqlen = train_ids.shape
    # tensor order: linear weights, then biases, then norm weights (as _Capture.vectors lists them)
    blocks = [*sel.linear_block, *(b for b, lin in zip(sel.linear_block, linears, strict=True) if lin.bias is not None)]
    blocks += sel.norm_block
    numel = [lin.weight.numel() for lin in linears] + [lin.bias.numel() for lin in linears if lin.bias is not None]
    numel += [norm.get_parameter("weight").numel() for norm in sel.norms]
    n_weights = len(linears)

    with _FrozenForFactors(model), _Capture(linears, sel.norms) as capture:

        def run(ids: torch.Tensor, lengths: torch.Tensor | None) -> None:
            capture.clear()
            with torch.enable_grad():
                _sequence_losses(model, ids.to(device), lengths).sum().backward()
            if len(capture.grads) != len(linears) or len(capture.norm_grads) != len(sel.norms):
                raise PruneConfigError("LayerIF: the backward did not reach every selected module")

        # summed validation gradient: dense per linear weight, a vector per bias / norm weight
        g_val = [torch.zeros(lin.weight.shape, dtype=compute, device=device) for lin in linears]
        g_vec: list[torch.Tensor] = []
        for lo, hi in _batches(0, len(val_ids), batch_size):
            run(val_ids[lo:hi], None if val_lengths is None else val_lengths[lo:hi])
            for index in range(n_weights):
                x = capture.inputs[index].to(compute).flatten(0, 1)
                g_val[index] += capture.grads[index].to(compute).flatten(0, 1).T @ x
            vectors = [v.sum(0) for v in capture.vectors(compute)]
            g_vec = vectors if not g_vec else [a + b for a, b in zip(g_vec, vectors, strict=True)]

        val_dot = torch.zeros(len(numel), n, dtype=torch.float64)
        vec_grads: list[list[torch.Tensor]] = [[] for _ in g_vec]  # per vector tensor, per-sample gradients

        def first_visit(lo: int, hi: int) -> None:
            for index in range(n_weights):
                x = capture.inputs[index].to(compute)
                delta = capture.grads[index].to(compute)
                val_dot[index, lo:hi] = ((delta @ g_val[index]) * x).sum((1, 2)).double().cpu()
            for k, v in enumerate(capture.vectors(compute)):
                val_dot[n_weights + k, lo:hi] = (v @ g_vec[k]).double().cpu()
                vec_grads[k].append(v)

        if estimator == "identity":
            for lo, hi in _batches(0, n, batch_size):
                run(train_ids[lo:hi], None if train_lengths is None else train_lengths[lo:hi])
                first_visit(lo, hi)
            influence = -val_dot
        else:
            gram = torch.zeros(len(numel), n, n, dtype=torch.float64)
            groups = capture.groups()
            in_dims = [linears[g[0]].in_features for g in groups]
            per_sample = seqlen * dtype.itemsize * (sum(in_dims) + sum(lin.out_features for lin in linears))
            bank = max(1, min(n, int(bank_gib * _GIB // per_sample)))
            if bank < n:
                log.info("DataInf: %d training samples in chunks of %d (bank_gib=%s)", n, bank, bank_gib)
            for start in range(0, n, bank):
                stop = min(start + bank, n)
                xs = [torch.empty(stop - start, seqlen, d, dtype=dtype, device=device) for d in in_dims]
                ds = [
                    torch.empty(stop - start, seqlen, lin.out_features, dtype=dtype, device=device) for lin in linears
                ]
                for lo, hi in _batches(start, stop, batch_size) + _batches(stop, n, batch_size):
                    run(train_ids[lo:hi], None if train_lengths is None else train_lengths[lo:hi])
                    new_x = [capture.inputs[g[0]] for g in groups]
                    new_d = [capture.grads[i] for i in range(n_weights)]
                    stored = min(lo, stop) - start  # bank rows filled before this batch
                    if lo < stop:  # first visit: <G, g_i> and the Gram block of the batch with itself
                        first_visit(lo, hi)
                        for index, block in _factor_gram(groups, new_x, new_d, new_x, new_d, compute).items():
                            gram[index, lo:hi, lo:hi] = block.cpu()
                    if stored > 0:
                        bank_x, bank_d = [x[:stored] for x in xs], [d[:stored] for d in ds]
                        for index, block in _factor_gram(groups, bank_x, bank_d, new_x, new_d, compute).items():
                            gram[index, start : start + stored, lo:hi] = block.cpu()
                            gram[index, lo:hi, start : start + stored] = block.T.cpu()
                    if lo < stop:
                        for x, value in zip(xs, new_x, strict=True):
                            x[lo - start : hi - start] = value
                        for d, value in zip(ds, new_d, strict=True):
                            d[lo - start : hi - start] = value
                del xs, ds
            for k, parts in enumerate(vec_grads):
                v = torch.cat(parts).double()
                gram[n_weights + k] = (v @ v.T).cpu()
            influence = datainf_influence(gram, val_dot, numel, lambda_const)
    scores = positive_block_scores(influence, blocks, n_blocks)
    if positives is not None:
        positives[:] = positive_sample_counts(influence, blocks, n_blocks)
    if not any(scores):
        log.warning(
            "LayerIF (%s) scores are all zero: no training sample raises the validation loss; the allocation will be "
            "uniform. Use the model's own kind of text for training and held-out tasks for validation.",
            estimator,
        )
    return scores
