"""dvc.yaml's deps, derived from the code: each stage must depend on every module
of src/licbench its command imports (transitively), and on no other.

The closure follows every import statement, those inside functions too (AST,
nothing is run), relative ones, and the parent packages' ``__init__`` an import
executes. A directory dep covers the modules under it.
"""

import ast
from collections import deque
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"

# Modules that cannot change a stage's outputs: a stage need not, and so must
# not, list them (a dep reruns the stage when it changes).
CANNOT_CHANGE_AN_OUTPUT = {
    "licbench/__init__.py": "the package's docstring and version string",
    "licbench/data/__init__.py": "the package's docstring",
    "licbench/errors.py": "exception classes: what an error says, not what a stage writes",
    "licbench/entry.py": "process start-up: logging set-up and exit statuses",
    "licbench/config.py": "the params.yaml schema: it checks and types values that DVC tracks "
                          "key by key in params.yaml (it holds no default for them), and resolves "
                          "the device (where a stage runs) and the mirror (where verified files "
                          "come from)",
    "licbench/tracking.py": "MLflow runs, tags and the git commit; nothing it writes is a DVC output",
    "licbench/train/mlflow_run.py": "the train stage's MLflow run: its params, tags and metrics; it hands "
                                    "the checkpoint the run's id and the manifest's digest (provenance), "
                                    "never a setting or a weight",
    "licbench/fileio.py": "atomic writes and sha256 of bytes made elsewhere",
    "licbench/progress.py": "progress bars and log lines on stderr",
    "licbench/device.py": "the device's name in words, for the records (a summary's device "
                          "field, MLflow tags); no number depends on it",
    "licbench/data/download.py": "writes exactly the bytes a server or mirror serves, or fails; "
                                 "those of a pinned set are checked against data/sources.py's "
                                 "checksums (an unpinned set's are the server's, whatever the code)",
}


def module_file(name: str) -> str | None:
    """``licbench.data.crops`` -> ``licbench/data/crops.py`` (or a package's
    ``__init__.py``), relative to src/; None outside the package."""
    if name != "licbench" and not name.startswith("licbench."):
        return None
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (SRC / candidate).is_file():
            return candidate.as_posix()
    return None


def imported_modules(path: Path, module: str | None) -> set[str]:
    """The licbench modules ``path`` imports (``module``: its dotted name, for
    relative imports; None for a script), with the parent packages each import runs."""
    tree = ast.parse(path.read_text(), str(path))
    package = None
    if module is not None:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            names.add(target)
            # `from package import module` imports the module too.
            names.update(f"{target}.{alias.name}" for alias in node.names
                         if module_file(f"{target}.{alias.name}"))
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {n for n in with_parents if module_file(n)}


def import_closure(script: Path) -> dict[str, list[str]]:
    """Every module of src/licbench that running ``script`` imports -> the chain
    of imports that reaches it."""
    chains: dict[str, list[str]] = {}
    todo = deque((name, [script.relative_to(REPO).as_posix()]) for name in imported_modules(script, None))
    while todo:
        name, chain = todo.popleft()
        file = module_file(name)
        if file in chains:
            continue
        chains[file] = chain + [file]
        todo.extend((n, chains[file]) for n in imported_modules(SRC / file, name))
    return chains


def declared(stage: dict) -> list[str]:
    return (stage.get("do") or stage).get("deps") or []


DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGES = sorted(DVC)


def covers(dep: str, module: str) -> bool:
    dep = dep.removeprefix("src/").rstrip("/")
    return module == dep or module.startswith(dep + "/")


def test_every_stage_has_its_script_and_the_exemptions_exist():
    # stages/_*.py are helpers the stage scripts import (the interpreter check).
    assert STAGES == sorted(p.stem for p in (REPO / "stages").glob("*.py") if not p.stem.startswith("_"))
    for name in STAGES:
        assert f"stages/{name}.py" in declared(DVC[name]), f"dvc.yaml stage {name}: stages/{name}.py"
    for module in CANNOT_CHANGE_AN_OUTPUT:
        assert (SRC / module).is_file(), f"{module}: in CANNOT_CHANGE_AN_OUTPUT, but no such module"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_every_module_it_imports(stage):
    deps = declared(DVC[stage])
    closure = import_closure(REPO / "stages" / f"{stage}.py")
    missing = [" -> ".join(chain) for module, chain in sorted(closure.items())
               if module not in CANNOT_CHANGE_AN_OUTPUT and not any(covers(d, module) for d in deps)]
    assert not missing, (f"dvc.yaml stage {stage} lacks the dep(s) src/"
                         + ", src/".join(c.rsplit(" -> ", 1)[1] for c in missing)
                         + "; imported as:\n  " + "\n  ".join(missing))


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_no_module_it_does_not_import(stage):
    closure = import_closure(REPO / "stages" / f"{stage}.py")
    wrong = []
    for dep in declared(DVC[stage]):
        if not dep.startswith("src/licbench"):
            continue
        module = dep.removeprefix("src/")
        if module in CANNOT_CHANGE_AN_OUTPUT:
            wrong.append(f"{dep}: {CANNOT_CHANGE_AN_OUTPUT[module]} (it cannot change an output)")
        elif (SRC / module).is_dir() and not any(covers(dep, m) for m in closure):
            wrong.append(f"{dep}: no module under it is imported")
        elif module.endswith(".py") and module not in closure:
            wrong.append(f"{dep}: not imported")
    assert not wrong, f"dvc.yaml stage {stage}: needless dep(s), each reruns the stage for nothing:\n  " \
                      + "\n  ".join(wrong)
