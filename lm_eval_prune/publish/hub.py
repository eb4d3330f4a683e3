"""Publishing pruned checkpoints to the Hugging Face Hub with a generated model card (HfApi injected)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.report import REPORT_NAME, PruneReport
from lm_eval_prune.publish.results import Run, read_run

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
SINGLE_COMMIT_BYTES = (
    512 * 1024**2
)  # files above this get a commit of their own, so an interrupted upload resumes per file
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PublishError(ValueError):
    """Bad input for publishing; nothing was uploaded."""


@dataclass
class PublishPlan:
    repo_id: str
    files: list[tuple[str, int]]
    card: str
    private: bool
    revision: str | None
    create_pr: bool
    commits: list[str] = field(default_factory=list)


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise PublishError(f"repo id {repo_id!r} is invalid; use USER/NAME (letters, digits, '-', '_', '.')")


def load_checkpoint_report(directory: str | Path) -> PruneReport:
    path = Path(directory)
    if not (path / REPORT_NAME).is_file():
        raise PublishError(
            f"{str(path)!r} is not a pruned checkpoint: it has no {REPORT_NAME} (write one with `lm-eval-prune prune`)"
        )
    if not any(path.glob("*.safetensors")):
        raise PublishError(f"{str(path)!r} holds no *.safetensors weights")
    return PruneReport.load(path)


def matching_runs(report: PruneReport, result_files: list[str | Path]) -> list[Run]:
    """Results of this pruned model (same fingerprint) and dense runs of its base model; anything else is an error."""
    base = str(report.extra.get("base_model") or "")
    runs = []
    for path in result_files:
        run = read_run(path)
        fingerprint = (run.prune or {}).get("fingerprint")
        if run.variant.dense:
            if base and run.variant.base_model != base:
                raise PublishError(
                    f"results file {str(path)!r} is a dense run of {run.variant.base_model!r}, not of this checkpoint's base {base!r}"
                )
        elif fingerprint != report.fingerprint:
            raise PublishError(
                f"results file {str(path)!r} belongs to another model (prune fingerprint {fingerprint}); this checkpoint is {report.fingerprint}"
            )
        runs.append(run)
    return runs


def hub_base_model(report: PruneReport, override: str | None) -> str | None:
    """The base model's Hub id for the card (a local path is not one)."""
    candidate = override or str(report.extra.get("base_model") or "")
    if not candidate or Path(candidate).exists() or not _REPO_ID.match(candidate):
        return None
    return candidate


def reproduce_command(report: PruneReport, base: str) -> str:
    config = PruneConfig(**{k: v for k, v in report.config.items() if k in PruneConfig.keys()})
    defaults = PruneConfig()
    parts = [f"lm-eval-prune prune {base}"]
    for key in PruneConfig.keys():
        value = getattr(config, key)
        if key in ("method", "alloc", "sparsity") or (
            value != getattr(defaults, key) and key not in ("device", "offload", "calib_batch_size")
        ):
            parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts) + " --output OUT"


def render_card(
    report: PruneReport, repo_id: str, runs: list[Run], license_id: str | None = None, base_model: str | None = None
) -> str:
    """Model card text: YAML metadata (with model-index) and a body that says what was done and how it scores."""
    from huggingface_hub import EvalResult, ModelCardData

    from lm_eval_prune import __version__

    config = report.config
    base = hub_base_model(report, base_model)
    method, alloc = config["method"], config.get("alloc", "uniform")
    eval_results = []
    for run in runs:
        if run.variant.dense:
            continue
        for score in run.scores:
            if score.metric != "exact_match":
                continue
            eval_results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=score.task,
                    dataset_name=score.task,
                    dataset_config=f"thinking-budget-{score.budget}",
                    metric_type=score.metric,
                    metric_value=round(score.value, 4),
                    metric_name=f"{score.metric} (thinking budget {score.budget}, seed {score.seed})",
                )
            )
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_id,
        tags=["pruned", "sparsity", method, alloc, "lm-eval-prune"],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    body = [f"# {repo_id.split('/')[-1]}", ""]
    what = (
        f"{len(report.extra.get('removed_blocks', []))} decoder blocks removed (ShortGPT, {config.get('shortgpt_mode', 'bi')})"
        if method == "shortgpt"
        else f"**{method}** pruning with **{alloc}** layer-wise allocation at **{config['sparsity']}** sparsity"
        f" ({config.get('pattern', 'unstructured')})"
    )
    body += [
        f"This is {base or report.extra.get('base_model', 'the base model')} with {what}, made with lm-eval-prune {__version__}.",
        "",
    ]
    body += ["| setting | value |", "|---|---|"]
    calibration = report.calibration or {}
    rows = {
        "method": method,
        "allocation": alloc,
        "target sparsity": config["sparsity"],
        "pattern": config.get("pattern"),
        "measured overall sparsity (block linears)": f"{report.overall_sparsity:.4f}",
        "calibration": f"{calibration.get('source', config.get('calibration'))}, {calibration.get('nsamples', '-')} x {calibration.get('seqlen', '-')} tokens",
        "seed": config.get("seed"),
        "fingerprint": report.fingerprint,
        "package": f"lm-eval-prune {__version__}",
    }
    body += [f"| {k} | {v} |" for k, v in rows.items()]
    body += ["", "## Per-block sparsity", "", "| block | target | measured |", "|---|---|---|"]
    achieved = report.block_achieved_sparsity
    body += [
        f"| {i} | {t:.4f} | {achieved[i]:.4f} |"
        if i < len(achieved) and method != "shortgpt"
        else f"| {i} | {t:.4f} | |"
        for i, t in enumerate(report.block_sparsity)
    ]
    body += [
        "",
        "## Reproduce",
        "",
        "```bash",
        reproduce_command(report, base or str(report.extra.get("base_model", "BASE_MODEL"))),
        "```",
    ]
    if runs:
        body += ["", "## Results", "", "| model | task | thinking budget | exact_match |", "|---|---|---|---|"]
        for run in sorted(runs, key=lambda r: not r.variant.dense):
            for score in run.scores:
                if score.metric == "exact_match":
                    body.append(
                        f"| {'dense baseline' if run.variant.dense else 'this model'} | {score.task} | {score.budget} | {score.value:.4f} |"
                    )
    body += [
        "",
        "## Note",
        "",
        "Unstructured sparsity keeps the weight matrices dense in the files: zeros are stored like any value, so this checkpoint is "
        "as large as the base model and runs no faster with dense kernels. Speed-ups need sparse kernels (for example 2:4 "
        "sparsity on GPUs that support it) or structured pruning.",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(body)


def validate_card(card_text: str, expected_results: int) -> None:
    """huggingface_hub's own parsing of the metadata (model-index included), locally."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text)
    parsed = card.data.eval_results or []
    if len(parsed) != expected_results:
        raise PublishError(f"model card metadata lost results: {len(parsed)} parsed of {expected_results}")


def plan_upload(
    directory: str | Path, repo_id: str, card: str, private: bool, revision: str | None, create_pr: bool
) -> PublishPlan:
    files = sorted((p.name, p.stat().st_size) for p in Path(directory).iterdir() if p.is_file() and p.name != CARD_NAME)
    return PublishPlan(repo_id, [*files, (CARD_NAME, len(card.encode()))], card, private, revision, create_pr)


def _commit_groups(files: list[tuple[str, int]]) -> list[list[str]]:
    """Big files one per commit, small ones together; the card last, so a repo with a card is complete."""
    big = [[name] for name, size in files if size >= SINGLE_COMMIT_BYTES and name != CARD_NAME]
    small = [name for name, size in files if size < SINGLE_COMMIT_BYTES and name != CARD_NAME]
    return [*big, *([small] if small else []), [CARD_NAME]]


def publish(
    directory: str | Path,
    repo_id: str,
    results: list[str | Path] = (),  # type: ignore[assignment]
    *,
    private: bool = False,
    dry_run: bool = False,
    create_pr: bool = False,
    revision: str | None = None,
    api: Any = None,
    base_model: str | None = None,
    license_id: str | None = None,
) -> PublishPlan:
    """Upload a pruned checkpoint with its card. Everything is checked before anything is written.

    Files already on the Hub with the same content are skipped by ``huggingface_hub`` (their ids match), so a
    re-run after an interruption finishes the upload without duplicating it.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    report = load_checkpoint_report(directory)
    runs = matching_runs(report, list(results))
    api = api or HfApi()
    if not api.token and not _token_available():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded")
    card = render_card(report, repo_id, runs, license_id or _base_license(api, report, base_model), base_model)
    validate_card(card, sum(1 for r in runs if not r.variant.dense for s in r.scores if s.metric == "exact_match"))
    plan = plan_upload(directory, repo_id, card, private, revision, create_pr)
    try:
        user = api.whoami()
    except HfHubHTTPError as exc:
        raise PublishError(
            f"the Hub refused the token ({exc.response.status_code if exc.response is not None else 'error'}); nothing was uploaded"
        ) from None
    log.info("publishing %s as %s to %s", directory, user.get("name"), repo_id)
    if dry_run:
        return plan
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    folder = Path(directory)
    groups = [[name for name, _ in plan.files]] if create_pr else _commit_groups(plan.files)
    for group in groups:
        operations = [
            CommitOperationAdd(name, card.encode() if name == CARD_NAME else str(folder / name)) for name in group
        ]
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=f"Upload {', '.join(group)} (lm-eval-prune)",
            revision=revision,
            create_pr=create_pr,
        )
        plan.commits.append(getattr(info, "pr_url", None) or getattr(info, "commit_url", ""))
    return plan


def _token_available() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _base_license(api: Any, report: PruneReport, override: str | None) -> str | None:
    """The base model's license: from its local README metadata, else from the Hub; None when unknown."""
    base = override or str(report.extra.get("base_model") or "")
    if not base:
        return None
    readme = Path(base) / CARD_NAME
    try:
        if readme.is_file():
            from huggingface_hub import ModelCard

            return ModelCard.load(readme).data.license
        if hub_base_model(report, override):
            info = api.model_info(base)
            return getattr(getattr(info, "card_data", None), "license", None)
    except Exception as exc:  # license is optional: never block a publish on it
        log.info("base model license unknown (%s)", type(exc).__name__)
    return None
