"""The package layering (ARCHITECTURE.md, "Packages"), read from every module's imports.

    schemas   imports nothing of the project (the contract: records, codecs, normalisation, Hub)
    curation  imports schemas
    pretrain  imports schemas
    policy    imports schemas and pretrain
    pipelines imports anything; no library imports pipelines
    benchmarks, scripts, tests: free

Imports are read with ``ast``, at module level and inside functions alike (a lazy import is
still a dependency), and an offence is reported as ``file:line``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("schemas", "curation", "pretrain", "policy", "pipelines")
ALLOWED = {
    "schemas": {"schemas"},
    "curation": {"schemas", "curation"},
    "pretrain": {"schemas", "pretrain"},
    "policy": {"schemas", "pretrain", "policy"},
    "pipelines": set(PROJECT),
}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every absolute import anywhere in the module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layering_violations(root: Path) -> list[str]:
    """``file:line: <package> imports <module>`` for every import across the layers under ``root``."""
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            for line, module in imported_modules(ast.parse(path.read_text(), str(rel))):
                top = module.split(".")[0]
                if top in PROJECT and top not in allowed:
                    bad.append(f"{rel}:{line}: {package} imports {module}")
    return bad


def test_the_packages_import_only_the_layers_below_them():
    assert layering_violations(ROOT) == []


def test_every_library_package_is_checked():
    # a package added without a rule would pass unchecked
    libraries = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "benchmarks"}
    assert libraries <= set(ALLOWED), sorted(libraries - set(ALLOWED))


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checker_names_each_wrong_import_by_file_and_line(tmp_path):
    for package in PROJECT:
        write(tmp_path, f"{package}/__init__.py", "")
    write(tmp_path, "schemas/ok.py", "import numpy\nfrom schemas.errors import SchemaError\n")
    write(tmp_path, "policy/ok.py", "from pretrain.model import X\nimport schemas\n")
    write(tmp_path, "pipelines/ok.py", "from curation import a\nfrom policy import b\nimport pretrain.c\n")
    write(tmp_path, "curation/relative.py", "from .stages import x\n")  # inside its own package
    assert layering_violations(tmp_path) == []

    write(tmp_path, "schemas/bad.py", '"""doc"""\n\nfrom curation.config import VideoConfig\n')
    write(tmp_path, "curation/stages/bad.py", "import os\n\n\ndef f():\n    import pretrain.hub\n")
    write(tmp_path, "pretrain/bad.py", "from policy.api import Policy\n")
    write(tmp_path, "policy/bad.py", "x = 1\nfrom curation.stages import compose\n")
    write(tmp_path, "curation/cli.py", "from pipelines.usage import run\n")
    assert layering_violations(tmp_path) == [
        "schemas/bad.py:3: schemas imports curation.config",
        "curation/cli.py:1: curation imports pipelines.usage",
        "curation/stages/bad.py:5: curation imports pretrain.hub",
        "pretrain/bad.py:1: pretrain imports policy.api",
        "policy/bad.py:2: policy imports curation.stages",
    ]
