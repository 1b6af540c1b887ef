"""Build hook: the wheel carries the repository's top-level ``data/`` (the seed catalog) and
``notebooks/`` (the walkthrough) inside the package, as ``dr_kit/_bundle/``.

Those folders stay where the project's layout puts them and are their single source; this
copies them at build time, so an installed package finds them (``dr_kit.resources``)
without a checkout.  An editable install reads them in the checkout instead.
Everything else is in ``pyproject.toml``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLE = {"data": ("*",), "notebooks": ("*.ipynb", "*.py")}


class BuildPyWithBundle(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, patterns in BUNDLE.items():
            target = Path(self.build_lib) / "dr_kit" / "_bundle" / folder
            self.mkpath(str(target))
            for pattern in patterns:
                for f in sorted(p for p in (ROOT / folder).glob(pattern) if p.is_file()):
                    self.copy_file(str(f), str(target / f.name))


setup(cmdclass={"build_py": BuildPyWithBundle})
