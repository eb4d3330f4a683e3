"""Publishing pruned checkpoints to the Hugging Face Hub with a generated model card (HfApi injected).

Works from the checkpoint folder alone: the report is read as data (no ``PruneConfig`` is rebuilt, so a calibration
file that is gone does not matter), nothing uploaded carries a local absolute path, and ``HF_HUB_OFFLINE`` (set on
many clusters) is lifted for this command's Hub calls only: publishing is the point of the command.
"""

from __future__ import annotations

import glob
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.report import REPORT_NAME, PruneReport
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import file_sha256
from lm_eval_prune.publish.results import NotResults, Run, read_run

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
SANITISED_MAX_BYTES = 1024**2  # JSON files up to this size are checked for local paths (configs, reports)
NOT_SANITISED = frozenset({"tokenizer.json", "vocab.json"})  # token strings are data, never paths to rewrite
HUB_CALIBRATION_SETS = frozenset({"c4", "wikitext2"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
_PATH_KEYS = ("calibration", "layerif_scores", "layerif_train", "layerif_val")


class PublishError(PruneConfigError):
    """Bad input for publishing, or a Hub that refused or could not be reached; the message is one line."""


@dataclass
class PublishPlan:
    repo_id: str
    files: list[tuple[str, int]]
    card: str
    private: bool
    revision: str | None
    create_pr: bool
    commits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)  # files uploaded from memory (card, sanitised copies)


def _to_stderr(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


def check_repo_id(repo_id: str) -> None:
    """USER/NAME as the Hub accepts it (huggingface_hub's own ``validate_repo_id``), before anything else runs."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None if repo_id.count("/") == 1 else "it needs exactly one '/'"
    if problem is None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).splitlines()[0].rstrip(".")
    if problem:
        shown = repo_id if len(repo_id) <= 100 else repo_id[:60] + "..."
        problem = problem.replace(f": '{repo_id}'", "")
        raise PublishError(f"repo id {shown!r} is invalid ({problem}); use USER/NAME (letters, digits, '-', '_', '.')")


_LICENSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[/.-]|[/.]$|\.lock$|/\.")


def check_publish_options(revision: str | None, license_id: str | None, base_model: str | None) -> None:
    """``--revision`` a valid git branch name, ``--license`` a license id, ``--base-model`` a Hub id: checked with
    the repo id, before anything is read or sent (a dry run would otherwise pass what the upload refuses)."""
    if revision is not None and (not revision or _BAD_REF.search(revision) or len(revision) > 200):
        raise PublishError(
            f"--revision {revision!r} is not a valid branch name (no spaces, '..', '~', '^', ':', '?', '*', '[', "
            "'\\', and it cannot start with '-' or '.' or end with '/', '.' or '.lock')"
        )
    if license_id is not None and not _LICENSE_RE.match(license_id):
        raise PublishError(
            f"--license {license_id!r} is not a license id (letters, digits, '.', '+', '_', '-'; e.g. apache-2.0, mit)"
        )
    if base_model is not None:
        if base_model.count("/") != 1 or not _HUB_ID.match(base_model):
            raise PublishError(f"--base-model {base_model!r} is not a Hub model id; use ORG/NAME")
        try:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            validate_repo_id(base_model)
        except HFValidationError:
            raise PublishError(f"--base-model {base_model!r} is not a Hub model id; use ORG/NAME") from None


def load_checkpoint_report(directory: str | Path) -> PruneReport:
    path = Path(directory)
    if not (path / REPORT_NAME).is_file():
        raise PublishError(
            f"{str(path)!r} is not a pruned checkpoint: it has no {REPORT_NAME} (write one with `lm-eval-prune prune`)"
        )
    if not any(path.glob("*.safetensors")):
        raise PublishError(f"{str(path)!r} holds no *.safetensors weights")
    return PruneReport.load(path)


# ---- local paths out of everything uploaded -------------------------------------------------------------------


def _is_local_path(text: str) -> bool:
    """An absolute (or home-relative) path of this machine, as opposed to a Hub id or a plain name."""
    if not text or "\n" in text or len(text) > 4096:
        return False
    return (text.startswith("/") and len(text) > 1) or text.startswith("~") or bool(_WINDOWS_ABS.match(text))


def _strip_paths(value: Any) -> Any:
    """Every local absolute path inside a JSON value replaced by its last component."""
    if isinstance(value, str):
        return _path_name(value) if _is_local_path(value) else value
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    return value


def _path_name(text: str) -> str:
    """The last component of a path (``/data/models/base/`` -> ``base``)."""
    trimmed = text.replace("\\", "/").rstrip("/")
    if trimmed in ("", ".", ".."):
        return Path(text).resolve().name or text
    return Path(trimmed).name


def is_hub_id(name: str) -> bool:
    """A Hub model id (``org/name``), not a local folder (which may look like one)."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def base_names(report: PruneReport, override: str | None) -> tuple[str | None, str]:
    """(Hub id of the base model or None, the name the card shows: the Hub id or the local folder's name)."""
    for candidate in (override, report.base_model):
        if candidate and is_hub_id(candidate):
            return candidate, candidate
    local = report.base_model or ""
    return None, (_path_name(local) if local else "the base model")


def hub_base_model(report: PruneReport, override: str | None) -> str | None:
    """The base model's Hub id for the card (a local path is not one)."""
    return base_names(report, override)[0]


def _sha256(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _structured(method: str) -> bool:
    """Whole blocks were removed (ShortGPT): asked of the method registry, which is torch-free."""
    from lm_eval_prune.engine.methods import METHODS

    return method in METHODS and METHODS.get(method).structured


def public_report(report: PruneReport, base_model: str | None = None) -> dict[str, Any]:
    """The report as uploaded: base model as Hub id or folder name, sources as file names with their content hash."""
    data = report.to_dict()
    hub_id, shown = base_names(report, base_model)
    data["base_model"] = hub_id or (shown if report.base_model else "")
    calibration = dict(data.get("calibration") or {})
    source = str(calibration.get("source") or "")
    if source and source not in HUB_CALIBRATION_SETS:
        if not calibration.get("source_sha256") and Path(source).is_file():
            calibration["source_sha256"] = _sha256(Path(source))
        calibration["source"] = _path_name(source)
    data["calibration"] = calibration
    config = dict(data.get("config") or {})
    for key in _PATH_KEYS:
        value = config.get(key)
        if isinstance(value, str) and value and value not in HUB_CALIBRATION_SETS:
            config[key] = _path_name(value)
    data["config"] = config
    return _strip_paths(data)


def sanitised_files(directory: Path, report_data: dict[str, Any]) -> dict[str, bytes]:
    """Copies of the folder's files that would carry a local path, rewritten (the local files stay as they are)."""
    out: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name in NOT_SANITISED or not path.is_file() or path.stat().st_size > SANITISED_MAX_BYTES:
            continue
        raw = path.read_bytes()
        if path.name == REPORT_NAME:
            data, clean = json.loads(raw), report_data
        else:
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            clean = _strip_paths(data)
        if clean != data:
            out[path.name] = (json.dumps(clean, indent=2, ensure_ascii=False) + "\n").encode()
    return out


def calibration_label(report: dict[str, Any]) -> str:
    """``c4`` / ``calib.txt (sha256 1234abcd…)`` / ``calib.txt`` when the file is gone and no hash was recorded."""
    calibration = report.get("calibration") or {}
    source = str(calibration.get("source") or report["config"].get("calibration") or "-")
    sha = calibration.get("source_sha256")
    text = f"{source} (sha256 {str(sha)[:16]})" if sha else source
    return f"{text}, {calibration.get('nsamples', '-')} x {calibration.get('seqlen', '-')} tokens"


# ---- results and card -----------------------------------------------------------------------------------------


def matching_runs(
    report: PruneReport, result_files: list[str | Path], base_model: str | None = None, notes: list[str] | None = None
) -> list[Run]:
    """Results of this pruned model (same fingerprint) and dense runs of its base model; anything else is an error."""
    bases = {b for b in (report.base_model, base_model) if b}
    runs = []
    for path in result_files:
        try:
            run = read_run(path)
        except NotResults as exc:
            raise PublishError(f"results file {str(path)!r} is not lm-eval results: {exc}") from None
        fingerprint = (run.prune or {}).get("fingerprint")
        if run.variant.dense:
            if bases and run.variant.base_model not in bases:
                raise PublishError(
                    f"results file {str(path)!r} is a dense run of {run.variant.base_model!r}, "
                    f"not of this checkpoint's base {report.base_model!r}"
                )
        elif fingerprint != report.fingerprint:
            raise PublishError(
                f"results file {str(path)!r} belongs to another model (prune fingerprint {fingerprint}); "
                f"this checkpoint is {report.fingerprint}"
            )
        if notes is not None:
            notes.extend(f"{path}: {note}" for note in run.notes)
        runs.append(run)
    return runs


def reproduce_command(config: dict[str, Any], base: str) -> str:
    """The ``prune`` command line for these settings: defaults read from PruneConfig's fields, nothing constructed."""
    from lm_eval_prune.engine.config import EXECUTION_FIELDS, PruneConfig

    parts = [f"lm-eval-prune prune {base}"]
    for spec in fields(PruneConfig):
        if spec.name not in config:
            continue
        value = config[spec.name]
        always = spec.name in ("method", "alloc", "sparsity")
        if always or (value != spec.default and spec.name not in EXECUTION_FIELDS):
            if spec.type == "bool" or isinstance(value, bool):
                if value:
                    parts.append(f"--{spec.name.replace('_', '-')}")
                continue
            parts.append(f"--{spec.name.replace('_', '-')} {value}")
    return " ".join(parts) + " --output OUT"


def _exact_match_results(runs: list[Run]) -> list[Any]:
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=score.task,
            dataset_name=score.task,
            dataset_config=f"thinking-budget-{score.budget}",
            metric_type=score.metric,
            metric_value=round(score.value, 4),
            metric_name=f"{score.metric} (thinking budget {score.budget}, seed {score.seed})",
        )
        for run in runs
        if not run.variant.dense
        for score in run.scores
        if score.metric == "exact_match"
    ]


def render_card(
    report: PruneReport, repo_id: str, runs: list[Run], license_id: str | None = None, base_model: str | None = None
) -> str:
    """Model card text: YAML metadata (with model-index) and a body that says what was done and how it scores."""
    from huggingface_hub import ModelCardData

    from lm_eval_prune._version import __version__

    public = public_report(report, base_model)
    config = public["config"]
    hub_id, shown = base_names(report, base_model)
    method, alloc = config.get("method", "?"), config.get("alloc", "uniform")
    eval_results = _exact_match_results(runs)
    data = ModelCardData(
        base_model=hub_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_id,
        tags=["pruned", "sparsity", method, alloc, "lm-eval-prune"],
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results or None,
    )
    if _structured(method):
        removed = ", ".join(
            f"{b.index}" + (f" (BI {b.block_influence:.4f})" if b.block_influence is not None else "")
            for b in report.removed_blocks
        )
        what = f"{len(report.removed_blocks)} decoder blocks removed (ShortGPT, {config.get('shortgpt_mode', 'bi')})"
    else:
        removed = ""
        what = (
            f"**{method}** pruning with **{alloc}** layer-wise allocation at **{config.get('sparsity')}** sparsity"
            f" ({config.get('pattern', 'unstructured')})"
        )
    intro = f"This is {shown} with {what}, made with lm-eval-prune {__version__}."
    body = [f"# {repo_id.split('/')[-1]}", "", intro, ""]
    body += ["| setting | value |", "|---|---|"]
    rows: dict[str, Any] = {
        "base model": shown + (f" (revision {report.revision})" if report.revision else ""),
        "method": method,
        "allocation": alloc,
        "target sparsity": config.get("sparsity"),
        "pattern": config.get("pattern"),
        "measured overall sparsity (block linears)": f"{report.overall_sparsity:.4f}",
        "calibration": calibration_label(public),
        "seed": config.get("seed"),
        "fingerprint": report.fingerprint,
        "package": f"lm-eval-prune {__version__}",
    }
    if removed:
        rows["removed blocks"] = removed
        rows["removed share of block-linear weights"] = f"{report.removed_param_share:.4f}"
    body += [f"| {k} | {v} |" for k, v in rows.items()]
    body += ["", "## Per-block sparsity", "", "| block | target | measured |", "|---|---|---|"]
    achieved = report.block_achieved_sparsity
    body += [
        f"| {i} | {t:.4f} | {achieved[i]:.4f} |"
        if i < len(achieved) and not _structured(method)
        else f"| {i} | {t:.4f} | |"
        for i, t in enumerate(report.block_sparsity)
    ]
    body += ["", "## Reproduce", "", "```bash", reproduce_command(config, hub_id or shown), "```"]
    if config.get("calibration") and config["calibration"] not in HUB_CALIBRATION_SETS:
        body += ["", f"The calibration text was the local file {calibration_label(public).split(',')[0]}."]
    if runs:
        body += ["", "## Results", "", "| model | task | thinking budget | exact_match |", "|---|---|---|---|"]
        for run in sorted(runs, key=lambda r: not r.variant.dense):
            name = "dense baseline" if run.variant.dense else "this model"
            body += [
                f"| {name} | {s.task} | {s.budget} | {s.value:.4f} |" for s in run.scores if s.metric == "exact_match"
            ]
    body += [
        "",
        "## Note",
        "",
        "Unstructured sparsity keeps the weight matrices dense in the files: zeros are stored like any value, so this "
        "checkpoint is as large as the base model and runs no faster with dense kernels. Speed-ups need sparse kernels "
        "(for example 2:4 sparsity on GPUs that support it) or structured pruning.",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(body)


def validate_card(card_text: str, expected_results: int) -> None:
    """huggingface_hub's own parsing of the metadata (model-index included), locally."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text)
    parsed = getattr(card.data, "eval_results", None) or []
    if len(parsed) != expected_results:
        raise PublishError(f"model card metadata lost results: {len(parsed)} parsed of {expected_results}")


def plan_upload(
    directory: str | Path,
    repo_id: str,
    card: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    uploads: dict[str, bytes] | None = None,
) -> PublishPlan:
    """What will be uploaded: the folder's top-level files (sanitised sizes where rewritten), the card last."""
    uploads = dict(uploads or {})
    files = sorted(
        (p.name, len(uploads[p.name]) if p.name in uploads else p.stat().st_size)
        for p in Path(directory).iterdir()
        if p.is_file() and p.name != CARD_NAME
    )
    uploads[CARD_NAME] = card.encode()
    return PublishPlan(
        repo_id, [*files, (CARD_NAME, len(uploads[CARD_NAME]))], card, private, revision, create_pr, uploads=uploads
    )


# ---- talking to the Hub ---------------------------------------------------------------------------------------


@contextmanager
def hub_online() -> Iterator[None]:
    """Lift huggingface_hub's offline switch (read from HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE at import) for a block."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_call(api: Any, what: str, call: Callable[[], Any], after: str = "nothing was uploaded") -> Any:
    """Run one Hub call; an HTTP error or an unreachable Hub becomes one line naming the endpoint and the status."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = getattr(api, "endpoint", "the Hub")
    try:
        return call()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = str(exc).splitlines()[0][:160]
        raise PublishError(f"{what}: {endpoint} answered HTTP {status} ({reason}); {after}") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise PublishError(f"{what}: cannot reach {endpoint} ({type(exc).__name__}: {exc}); {after}") from None


def _token_available(api: Any) -> bool:
    from huggingface_hub import get_token

    return bool(getattr(api, "token", None)) or get_token() is not None


def _check_token(api: Any, dry_run: bool, offline: bool, note: Callable[[str], None]) -> None:
    """No token: an error when uploading, a note in a dry run. A refused token is an error either way."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if not _token_available(api):
        if dry_run:
            note("no token: the upload would fail (set HF_TOKEN or run `hf auth login`)")
            return
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded")
    if dry_run and offline:
        note("HF_HUB_OFFLINE is set: the dry run stays offline, so the token was not checked with the Hub")
        return
    try:
        user = api.whoami()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise PublishError(f"the Hub refused the token ({status}); nothing was uploaded") from None
        problem = f"{api.endpoint} answered HTTP {status}"
    except (httpx2.HTTPError, OSError) as exc:
        problem = f"cannot reach {api.endpoint} ({type(exc).__name__})"
    else:
        log.info("publishing as %s", user.get("name"))
        return
    if dry_run:
        note(f"could not check the token: {problem}")
        return
    raise PublishError(f"checking the token: {problem}; nothing was uploaded")


def _base_license(
    api: Any, report: PruneReport, override: str | None, offline: bool, note: Callable[[str], None]
) -> str | None:
    """The base model's license: from its local README metadata, else from the Hub; None when unknown."""
    from huggingface_hub import ModelCard

    local = Path(report.base_model) / CARD_NAME if report.base_model else None
    hub_id = hub_base_model(report, override)
    try:
        if local is not None and local.is_file():
            return ModelCard.load(local).data.license
        if not hub_id:
            return None
        if offline:
            note(f"offline: the license of {hub_id} was not looked up; pass --license to set one")
            return None
        info = api.model_info(hub_id)
        return getattr(getattr(info, "card_data", None), "license", None)
    except Exception as exc:  # license is optional: never block a publish on it
        response = getattr(exc, "response", None)
        why = f"HTTP {response.status_code}" if response is not None else type(exc).__name__
        note(f"the license of {hub_id or report.base_model} is unknown ({why}); pass --license to set one")
    return None


def _upload(api: Any, directory: Path, plan: PublishPlan) -> list[str]:
    """The folder with huggingface_hub's ``upload_folder`` (skips unchanged files, splits and resumes large folders),
    then the card and sanitised copies in a last commit, so a repo with a card is complete. Returns the URLs of the
    commits that changed something."""
    from huggingface_hub import CommitOperationAdd

    repo_id, revision, create_pr = plan.repo_id, plan.revision, plan.create_pr
    resume = "re-run the same command to resume (files already on the Hub are skipped)"
    names = [name for name, _ in plan.files if name not in plan.uploads]
    head = None
    if not create_pr:
        head = _hub_call(api, "reading the repo", lambda: api.repo_info(repo_id, revision=revision).sha, resume)
    first = None
    if names:
        first = _hub_call(
            api,
            f"uploading {directory.name}",
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=directory,
                allow_patterns=[glob.escape(n) for n in names],
                commit_message="Upload pruned checkpoint (lm-eval-prune)",
                revision=revision,
                create_pr=create_pr,
            ),
            resume,
        )
    operations = [CommitOperationAdd(name, data) for name, data in plan.uploads.items() if name != CARD_NAME]
    operations.append(CommitOperationAdd(CARD_NAME, plan.uploads[CARD_NAME]))
    pr_revision = getattr(first, "pr_revision", None) if create_pr else None
    last = _hub_call(
        api,
        "uploading the model card",
        lambda: api.create_commit(
            repo_id,
            operations=operations,
            commit_message="Add model card (lm-eval-prune)",
            revision=pr_revision or revision,
            create_pr=create_pr and pr_revision is None,
        ),
        resume,
    )
    urls = []
    if create_pr:
        pr = getattr(first, "pr_url", None) or getattr(last, "pr_url", None)
        urls = [pr] if pr else []
    else:
        for info, before in ((first, head), (last, first.oid if first is not None else head)):
            if info is not None and info.oid != before:
                urls.append(info.commit_url)
                head = info.oid
    return urls


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
    on_note: Callable[[str], None] = _to_stderr,
) -> PublishPlan:
    """Upload a pruned checkpoint with its card. Everything is checked before anything is written.

    Notes (no token in a dry run, offline lookups skipped, nothing changed) go to ``on_note`` one line each and into
    ``plan.notes``. A re-run after an interruption finishes the upload without duplicating files.
    """
    from huggingface_hub import HfApi, constants

    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        on_note(line)

    check_repo_id(repo_id)
    check_publish_options(revision, license_id, base_model)
    if create_pr and revision:
        raise PublishError(f"--create-pr opens a pull request against the default branch; drop --revision {revision!r}")
    folder = Path(directory)
    report = load_checkpoint_report(folder)
    runs = matching_runs(report, list(results), base_model, notes)
    for line in notes:
        on_note(line)
    offline = constants.is_offline_mode()
    api = api or HfApi()
    hub_id, shown = base_names(report, base_model)
    if report.base_model and not hub_id:
        note(f"base model is the local folder {shown!r}; pass --base-model ORG/NAME to link the card to it on the Hub")
    with nullcontext() if dry_run else hub_online():
        if offline and not dry_run:
            note(f"HF_HUB_OFFLINE is set; publishing contacts {api.endpoint} anyway")
        _check_token(api, dry_run, offline, note)
        license_id = license_id or _base_license(api, report, base_model, offline and dry_run, note)
        card = render_card(report, repo_id, runs, license_id, base_model)
        validate_card(card, len(_exact_match_results(runs)))
        uploads = sanitised_files(folder, public_report(report, base_model))
        plan = plan_upload(folder, repo_id, card, private, revision, create_pr, uploads)
        plan.notes = notes
        if dry_run:
            return plan
        _hub_call(api, "creating the repo", lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        if revision:
            _hub_call(
                api, f"creating branch {revision}", lambda: api.create_branch(repo_id, branch=revision, exist_ok=True)
            )
        plan.commits = _upload(api, folder, plan)
    if not plan.commits:
        note(f"nothing changed: {repo_id} already holds these files and this card; no commit made")
    return plan
