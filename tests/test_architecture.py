"""Guards on the shape: the core never imports streamlit; every CLI command has help and a README mention."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import storybench_core
from storybench_core.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_core_modules_do_not_import_streamlit():
    code = (
        "import importlib, pkgutil, sys, storybench_core\n"
        "for m in pkgutil.walk_packages(storybench_core.__path__, 'storybench_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k == 'streamlit' or k.startswith('streamlit.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"storybench_core imported streamlit: {out.stdout.strip()[:200]}"


def test_every_core_module_imports():
    for m in pkgutil.walk_packages(storybench_core.__path__, "storybench_core."):
        importlib.import_module(m.name)


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_every_cli_command_has_help_and_a_readme_mention():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, sub in _commands().items():
        assert sub.format_help().strip(), name
        assert f"storybench {name}" in readme, f"README does not mention `storybench {name}`"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme and "make run" in readme
    assert "make test" in ci
