"""Installs the lm-eval startup hook (a .pth file) beside the package; everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "lm_eval_prune.pth"


class BuildWithStartupHook(build_py):
    """build_py that also writes the .pth into the wheel's root (site-packages)."""

    def run(self) -> None:
        super().run()
        namespace: dict = {}
        exec(Path("lm_eval_prune/harness/plugin.py").read_text(), namespace)  # read PTH_LINE without importing
        Path(self.build_lib, PTH_NAME).write_text(namespace["PTH_LINE"])

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


setup(cmdclass={"build_py": BuildWithStartupHook})
