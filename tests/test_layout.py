"""The package layout the code base promises (docs/ARCHITECTURE.md): layers, one name per idea.

These read the source with ``ast`` rather than importing it, so a violation is found even in a
module no other test imports.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import medvl

PACKAGE = Path(medvl.__file__).parent
# the CLI layer (commands + dispatcher) and the tools sit on top of the core; the core never reaches up
TOP_LAYERS = ("medvl.tools", "medvl.commands", "medvl.cli", "medvl.__main__")
# the verb protocol every command module implements (medvl.cli dispatches on it)
COMMAND_PROTOCOL = {"add_arguments", "run"}
# what a models/ file may import: it is copied into checkpoints and loaded with trust_remote_code
REMOTE_CODE_SAFE = {"torch", "transformers", "numpy", "scipy", "monai"} | set(sys.stdlib_module_names)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported_modules(name: str, path: Path, tree: ast.AST) -> list[tuple[int, str, int]]:
    """(line, absolute module name, relative level) of every import in a module, nested ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, node.level))
    return out


def _is_top(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP_LAYERS)


def test_core_never_imports_tools_or_commands():
    bad = []
    for name, (path, tree) in _sources().items():
        if _is_top(name):
            continue
        for line, target, _ in _imported_modules(name, path, tree):
            if _is_top(target):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not bad, "the core imports a layer above it:\n" + "\n".join(bad)


def test_models_are_remote_code_safe():
    bad = []
    for name, (path, tree) in _sources().items():
        if not name.startswith("medvl.models"):
            continue
        for line, target, level in _imported_modules(name, path, tree):
            if level == 0 and target.split(".")[0] not in REMOTE_CODE_SAFE:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (absolute)")
    assert not bad, "models/ files are copied into checkpoints; imports must be relative or safe:\n" + "\n".join(bad)


def test_one_definition_per_public_name():
    defined: dict[str, list[str]] = defaultdict(list)
    for name, (path, tree) in _sources().items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith(
                "_"
            ):
                if name.startswith("medvl.commands.") and node.name in COMMAND_PROTOCOL:
                    continue
                defined[node.name].append(str(path.relative_to(PACKAGE)))
    repeated = {n: where for n, where in defined.items() if len(where) > 1}
    assert not repeated, f"public names defined in several modules: {repeated}"


def test_no_import_error_shims_around_medvl_modules():
    """A missing medvl module must fail loudly, not switch a feature off."""
    bad = []
    for name, (path, tree) in _sources().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"}:
                continue
            for stmt in node.body:
                for line, target, level in _imported_modules(name, path, stmt):
                    if level or target == "medvl" or target.startswith("medvl."):
                        bad.append(f"{path.relative_to(PACKAGE)}:{line} guards the import of {target}")
    assert not bad, "ImportError shims around medvl's own modules:\n" + "\n".join(bad)


def test_layout_checks_can_fail(tmp_path):
    """The import walker resolves relative imports (a check that never matches would pass forever)."""
    tree = ast.parse("from ..tools.bench import x\nfrom . import y\nimport medvl.commands.serve\n")
    got = _imported_modules("medvl.serve.app", PACKAGE / "serve" / "app.py", tree)
    assert [t for _, t, _ in got] == ["medvl.tools.bench", "medvl.serve", "medvl.commands.serve"]
    assert _is_top("medvl.tools.bench") and not _is_top("medvl.toolsx")
