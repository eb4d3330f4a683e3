"""The startup hook (which processes it fires in, what it imports, the .start file, editable wheels) and the guard of
``simple_evaluate``: bad model args and task data errors of pruned-* runs as one line and exit 2, before weights load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from lm_eval_fixtures import write_model, write_tasks

from lm_eval_prune.harness import plugin
from lm_eval_prune.harness.plugin import PTH_LINE, START_LINE, START_MODULE_SOURCE, is_lm_eval_process

BIN = Path(sys.executable).parent
SITE_PACKAGES = str(Path(importlib.util.find_spec("lm_eval").origin).parents[1])
# Run with ``python -S``: only the hook files under test run, not the ones installed here. Dependencies come from
# site-packages put on sys.path without its .pth files, this package from PYTHONPATH. The names of the checked
# modules are split, so that no command line below mentions lm-eval by accident.
PROBE = (
    f"import sys; sys.path.append({SITE_PACKAGES!r}); import site; site.addsitedir(sys.argv[-1]); "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lm' '_eval', 'lm' '_eval_prune', 'torch')))"
)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", env())
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def hook_installed() -> bool:
    return any(Path(p, plugin.PTH_NAME).is_file() for p in sys.path if p)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["/venv/bin/python", "/venv/bin/lm_eval", "--model", "hf"], True),
        (["/venv/bin/python3", "/venv/bin/lm-eval", "run"], True),
        (["/venv/bin/python", "/venv/bin/lm-eval-prune", "eval"], True),
        (["python", "-m", "lm_eval", "run"], True),
        (["python", "-u", "-m", "lm_eval"], True),  # torchrun's workers
        (["python", "-X", "importtime", "-W", "ignore", "-m", "lm_eval.__main__"], True),
        (["python", "-mlm_eval"], True),
        (["C:\\py\\python.exe", "C:\\venv\\Scripts\\lm_eval.exe"], True),
        # the interpreter of a clone in a folder named lm-eval-prune is not an lm-eval process
        (["/src/lm-eval-prune/.venv/bin/python", "-c", "pass"], False),
        (["/src/lm_eval_prune/.venv/bin/python", "-m", "pytest", "tests/lm_eval"], False),
        (["python", "script.py", "lm_eval", "lm-eval"], False),
        (["python", "-c", "import x", "lm_eval"], False),
        (["python", "-m", "lm_eval_prune.cli"], False),
        (["python", "-m", "pytest", "-k", "lm_eval"], False),
        (["python", "/x/lm_eval.py"], False),
        (["python", "-X", "lm_eval"], False),  # an option's value is not the script
        (["python", "-"], False),
        (["python"], False),
    ],
)
def test_lm_eval_processes_are_recognised_by_their_entry_point_only(argv, expected):
    assert is_lm_eval_process(argv) is expected


@pytest.mark.slow
def test_hook_imports_nothing_for_an_interpreter_in_a_folder_named_like_lm_eval(tmp_path):
    """Finding 1: a clone in ``lm-eval-prune/`` made ``.venv/bin/python -c ...`` an lm-eval process."""
    site = tmp_path / "site"
    site.mkdir()
    (site / plugin.PTH_NAME).write_text(PTH_LINE)
    clone_bin = tmp_path / "lm-eval-prune" / "bin"
    clone_bin.mkdir(parents=True)
    (clone_bin / "python").symlink_to(sys.executable)
    for cmd in (
        [str(clone_bin / "python"), "-S", "-c", PROBE, str(site)],
        [sys.executable, "-S", "-c", PROBE, "tests/lm_eval", str(site)],  # an argument named like lm-eval
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env(PYTHONPATH=str(REPO)))
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", (cmd, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_start_entry_point_does_the_same_job_import_free(tmp_path):
    """PEP 829: Python 3.15 resolves ``lm_eval_prune.start``'s entry point and calls it; simulated here."""
    site = tmp_path / "site"
    site.mkdir()
    (site / plugin.START_NAME).write_text(START_LINE)
    (site / f"{plugin.START_MODULE}.py").write_text(START_MODULE_SOURCE)
    code = PROBE.replace(
        "print(",
        "import pkgutil; [pkgutil.resolve_name(line)() for line in open(sys.argv[-1] + '/lm_eval_prune.start')]; "
        "print(",
    )
    plain = run([sys.executable, "-S", "-c", code, str(site)], env=env(PYTHONPATH=str(REPO)))
    assert plain.returncode == 0 and plain.stdout.strip() == "[]", plain.stderr
    fake = tmp_path / "lm_eval"  # named like the console script
    fake.write_text(code + "\nfrom lm_eval.api.registry import model_registry; print('pruned-hf' in model_registry)")
    inside = run([sys.executable, "-S", str(fake), str(site)], env=env(PYTHONPATH=str(REPO)))
    assert inside.returncode == 0, inside.stderr
    modules, registered = inside.stdout.strip().splitlines()
    assert "lm_eval_prune.harness.plugin" in modules and "torch" not in modules and registered == "True"


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["build_editable", "build_wheel"])
def test_editable_and_regular_wheels_carry_the_startup_files(tmp_path, hook):
    """Finding 2: ``pip install -e .`` installed no .pth, so ``lm_eval --model pruned-hf`` knew no such model."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("lm_eval_prune", "tasks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    out.mkdir()
    code = f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = out / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        root = {n: archive.read(n).decode() for n in archive.namelist() if "/" not in n}
        record = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))).decode()
    assert root[plugin.PTH_NAME] == PTH_LINE
    assert root[plugin.START_NAME] == START_LINE
    assert root[f"{plugin.START_MODULE}.py"] == START_MODULE_SOURCE
    assert f"{plugin.PTH_NAME}," in record  # uninstall removes it
    if hook == "build_editable":  # the finder's .pth sorts first: lm_eval_prune is importable when the hook runs
        finder_pth = next(n for n in root if n.startswith("__editable__") and n.endswith(".pth"))
        assert sorted([finder_pth, plugin.PTH_NAME])[0] == finder_pth


# ----------------------------------------------------------------------------- the simple_evaluate guard


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    return {"model": write_model(root / "model"), "tasks": write_tasks(root), "root": root}


@pytest.fixture
def no_weights(monkeypatch):
    """Any weight load fails the test: the guard's errors must come first."""
    from lm_eval.models.huggingface import HFLM

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(HFLM, "_create_model", must_not_load)


def guarded_evaluate():
    from lm_eval.evaluator import simple_evaluate

    from lm_eval_prune.harness.precheck import guarded

    plugin.register()
    return guarded(simple_evaluate)


@pytest.mark.parametrize(
    "extra,message",
    [
        ("metod=wanda", "Error: unknown model arg 'metod' (did you mean 'method'?)"),
        ("sparsity=abc", "Error: sparsity='abc' is not a valid float"),
        ("alloc=owll", "Error: unknown alloc 'owll'; allowed: alphapruning, layerif, owl, uniform"),
    ],
)
def test_guard_turns_bad_model_args_into_one_line_and_exit_2(setup, no_weights, capsys, extra, message):
    from lm_eval.tasks import TaskManager

    with pytest.raises(SystemExit) as info:
        guarded_evaluate()(
            model="pruned-hf",
            model_args=f"pretrained={setup['model']},{extra}",
            tasks=["tiny_choice"],
            device="cpu",
            task_manager=TaskManager(include_path=str(setup["tasks"])),
        )
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_guard_reports_task_data_before_the_model_loads(setup, no_weights, capsys, tmp_path):
    from lm_eval.tasks import TaskManager

    (tmp_path / "aime24.jsonl").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        guarded_evaluate()(
            model="pruned-hf",
            model_args=f"pretrained={setup['model']},method=magnitude,sparsity=0.5",
            tasks=["tts_aime24"],
            device="cpu",
            task_manager=TaskManager(include_path=str(REPO / "tasks"), metadata={"data_dir": str(tmp_path)}),
        )
    assert info.value.code == 2
    assert capsys.readouterr().err == f"Error: data file '{tmp_path / 'aime24.jsonl'}' is empty\n"


def test_guard_leaves_other_models_and_errors_alone(setup, no_weights):
    from lm_eval.tasks import TaskManager

    with pytest.raises(AssertionError, match="weights were loaded"):  # hf: no precheck, HFLM loads at once
        guarded_evaluate()(
            model="hf",
            model_args=f"pretrained={setup['model']},metod=wanda",
            tasks=["tiny_choice"],
            device="cpu",
            task_manager=TaskManager(include_path=str(setup["tasks"])),
        )


def test_guarded_run_passes_the_built_tasks_on_and_evaluates(setup, tmp_path):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(setup["tasks"]))
    loads: list[object] = []
    original = manager.load
    manager.load = lambda spec: loads.append(spec) or original(spec)  # type: ignore[method-assign]
    results = guarded_evaluate()(
        model="pruned-hf",
        model_args=f"pretrained={setup['model']},method=magnitude,sparsity=0.5,prune_cache=none",
        tasks=["tiny_choice", "tiny_gen"],
        device="cpu",
        task_manager=manager,
        limit=1,
    )
    assert set(results["results"]) == {"tiny_choice", "tiny_gen"}
    assert results["config"]["prune"]["config"]["method"] == "magnitude"
    assert loads[0] == ["tiny_choice", "tiny_gen"] and [type(t).__name__ for t in loads[1]] == ["ConfigurableTask"] * 2


def test_install_guards_the_package_lookup_once():
    import lm_eval

    from lm_eval_prune.harness.precheck import install

    before = lm_eval.__dict__.get("__getattr__")
    try:
        install()
        install()
        first, second = lm_eval.simple_evaluate, lm_eval.simple_evaluate
        assert first is second and getattr(first, "_lm_eval_prune", False)
        assert getattr(lm_eval.__getattr__, "_lm_eval_prune", False)
    finally:
        import lm_eval.evaluator as evaluator

        lm_eval.__getattr__ = before
        evaluator.simple_evaluate = getattr(evaluator.simple_evaluate, "__wrapped__", evaluator.simple_evaluate)


# ----------------------------------------------------------------------------- the real console script


def lm_eval_command(entry: list[str], model_args: str, tasks: str, include: Path, *more: str) -> list[str]:
    common = ["--device", "cpu", "--include_path", str(include), "--limit", "1"]
    return [*entry, "--model", "pruned-hf", "--model_args", model_args, "--tasks", tasks, *common, *more]


def last_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Initializing pruned-hf model" not in proc.stderr  # failed before the model was made
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(not hook_installed(), reason="no startup hook in this environment's site-packages")
@pytest.mark.parametrize(
    "extra,message",
    [
        ("metod=wanda", "Error: unknown model arg 'metod' (did you mean 'method'?)"),
        ("alloc=owll", "Error: unknown alloc 'owll'; allowed: alphapruning, layerif, owl, uniform"),
    ],
)
def test_console_script_bad_args_print_one_line(setup, extra, message):
    args = f"pretrained={setup['model']},{extra}"
    proc = run(lm_eval_command([str(BIN / "lm_eval")], args, "tiny_choice", setup["tasks"]))
    assert proc.returncode == 2
    assert last_line_error(proc).startswith(message)


@pytest.mark.slow
@pytest.mark.skipif(not hook_installed(), reason="no startup hook in this environment's site-packages")
def test_python_m_lm_eval_task_data_error_prints_one_line(setup, tmp_path):
    data = tmp_path / "data"
    metadata = ["--metadata", json.dumps({"data_dir": str(data)})]
    python_m = [sys.executable, "-m", "lm_eval"]
    args = f"pretrained={setup['model']},sparsity=abc"
    proc = run(lm_eval_command(python_m, args, "tts_math500", REPO / "tasks", *metadata))
    assert proc.returncode == 2
    assert last_line_error(proc) == "Error: sparsity='abc' is not a valid float"  # model args are checked first
    data.mkdir()
    (data / "math500.jsonl").write_text('{"problem": "1+1"}\n')
    args = f"pretrained={setup['model']},method=magnitude"
    proc = run(lm_eval_command(python_m, args, "tts_math500", REPO / "tasks", *metadata))
    assert proc.returncode == 2
    assert last_line_error(proc).startswith(f"Error: data '{data / 'math500.jsonl'}' record 1 has no 'answer' field")
