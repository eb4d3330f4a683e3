"""Installs the lm-eval startup hook beside the package; everything else is in pyproject.toml.

Three files land in site-packages, for wheels and editable installs (``pip install -e .``) alike:
``lm_eval_prune.pth`` (the hook line), ``lm_eval_prune.start`` (PEP 829, Python 3.15+) and the tiny module it names.
Their text comes from ``lm_eval_prune/harness/plugin.py``, read without importing the package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def startup_files() -> dict[str, str]:
    """File name -> text of the files that go into site-packages itself."""
    namespace: dict = {}
    exec(Path(__file__).resolve().parent.joinpath("lm_eval_prune/harness/plugin.py").read_text(), namespace)
    return {
        namespace["PTH_NAME"]: namespace["PTH_LINE"],
        namespace["START_NAME"]: namespace["START_LINE"],
        namespace["START_MODULE"] + ".py": namespace["START_MODULE_SOURCE"],
    }


class BuildWithStartupHook(build_py):
    """build_py that also writes the startup files into the wheel's root (site-packages).

    A regular wheel packs ``build_lib``. An editable wheel (setuptools' ``editable_wheel``, PEP 660) packs only
    its own finder plus what lies in the unpacked wheel folder, which it sets as ``install_lib``; so in editable
    mode the files go there too.
    """

    def run(self) -> None:
        super().run()
        folders = [self.build_lib]
        if getattr(self, "editable_mode", False):
            folders.append(self.get_finalized_command("install").install_lib)
        for folder in folders:
            for name, text in startup_files().items():
                Path(folder, name).write_text(text, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(str(Path(self.build_lib, n)) for n in startup_files())]


setup(cmdclass={"build_py": BuildWithStartupHook})
