"""Only adds ``gaincell_lm_eval.pth`` to the wheel, also the editable one (everything else is in pyproject.toml).

Why the file exists: see src/gaincell_lm_eval_hook.py.  ``tests/test_lm_eval.py`` runs the installed ``lm_eval``
command, so a setuptools change that drops the file from either kind of wheel fails the tests instead of passing
silently.
"""

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "gaincell_lm_eval.pth"
# guarded: a deleted editable source tree must not make every Python start-up print a traceback
LINE = "import importlib.util as u; u.find_spec('gaincell_lm_eval_hook') and __import__('gaincell_lm_eval_hook').install()\n"


class BuildWithPth(build_py):
    def run(self) -> None:
        super().run()
        (Path(self.build_lib) / PTH).write_text(LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class _WithPth:
    """An editable-install strategy that also writes the .pth file into the editable wheel."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __enter__(self) -> "_WithPth":
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc)

    def __call__(self, wheel: Any, files: list[str], mapping: Any) -> None:
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH, LINE.encode())


class EditableWithPth(editable_wheel):
    def _select_strategy(self, name: str, tag: str, build_lib: Any) -> Any:
        return _WithPth(super()._select_strategy(name, tag, build_lib))


setup(cmdclass={"build_py": BuildWithPth, "editable_wheel": EditableWithPth})
