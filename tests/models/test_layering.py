"""The model layer's floor plan: a family folder imports shared code from `models/kernels/` (or
`train/`, `evaluate/`, ...), never from another family's folder, and never another file's private
names; the kernels import no family."""

from __future__ import annotations

import ast
from pathlib import Path

import recstack.models

MODELS = Path(recstack.models.__file__).parent
SHARED = {"kernels"}  # folders under models/ that hold no model


def _families() -> list[str]:
    return sorted(p.name for p in MODELS.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name not in SHARED)


def _imports(path: Path, root: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import statement in `path` under `root`."""
    package = "recstack." + ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # a relative import, resolved against the file's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _targets(module: str, names: list[str]) -> list[str]:
    """The `recstack.models.<folder>` modules an import reaches (`from recstack.models import graph`
    reaches the graph folder through the name)."""
    if module == "recstack.models":
        return [f"recstack.models.{name}" for name in names]
    return [module] if module.startswith("recstack.models.") else []


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else None


def _violations(root: Path = MODELS) -> tuple[list[str], int]:
    families = _families()
    problems, n_files = [], 0
    for folder in [*families, *sorted(SHARED)]:
        for path in sorted((root / folder).rglob("*.py")):
            n_files += 1
            where = path.relative_to(root.parent)
            for module, names, line in _imports(path, root):
                for target in _targets(module, names):
                    other = _folder(target)
                    if other in families and other != folder:
                        problems.append(f"{where}:{line} imports {target} (family {other!r})")
                if module.startswith("recstack.") and module != "recstack.models":
                    private = [n for n in names if n.startswith("_")]
                    if private:
                        problems.append(f"{where}:{line} imports private {private} from {module}")
    return problems, n_files


def test_the_scan_sees_every_family():
    families = _families()
    assert {"baseline", "neighborhood", "factorization", "graph", "sequential", "content",
            "generative"} <= set(families)
    _, n_files = _violations()
    assert n_files >= 30  # every model file was parsed, not an empty glob


def test_no_family_imports_another_family_or_private_names():
    problems, _ = _violations()
    assert problems == [], "\n".join(problems)


def test_the_scan_catches_a_cross_family_import(tmp_path):
    # the same scan on a copy with one bad line must fail: the checker is not vacuous
    import shutil
    copy = tmp_path / "recstack" / "models"
    shutil.copytree(MODELS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    bad = copy / "baseline" / "pop.py"
    bad.write_text(bad.read_text() + "\nfrom recstack.models.graph.lightgcn import LightGCN\n"
                   "from recstack.models import sequential\nfrom ..factorization import bpr\n"
                   "from recstack.train.trainer import _private\n")
    problems, _ = _violations(copy)
    new = [p for p in problems if p.startswith("models/baseline/pop.py")]
    assert len(new) == 4, new
