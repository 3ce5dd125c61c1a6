"""The package's imports: no cycles between modules, no private names across modules, and
no torch where the workflow imports the package.

Every ``from dspo... import`` and ``import dspo...`` counts as an edge, at a module's top and
inside functions alike (an import inside a function that closes a cycle is still a cycle);
only imports under ``if TYPE_CHECKING:`` are left out. Importing ``dspo.a.b`` also runs the
package ``dspo.a``, so that is an edge too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

PACKAGE = Path(__file__).resolve().parents[1] / "dspo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every dspo import of one module."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "dspo":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub, None) if sub in modules else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "dspo"]
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in _imports(name, path, modules):
            parts = target.split(".")
            # importing dspo.a.b runs dspo.a's __init__ first
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    graph[name].add(prefix)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph(_modules()))
    assert not cycles, "modules that import each other: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_private_names_across_modules() -> None:
    modules = _modules()
    offences = [
        f"{name} imports {target}.{imported}"
        for name, path in modules.items()
        for target, imported in _imports(name, path, modules)
        if imported
        and imported.startswith("_")
        and not name.startswith(target + ".")
        and name != target
    ]
    assert not offences, "\n".join(offences)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_top_level_holds_packages_only() -> None:
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]


def _loaded_after(statements: list[str], libraries: tuple[str, ...]) -> list[str]:
    """Which of ``libraries`` a fresh interpreter has loaded after running ``statements``."""
    check = f"import sys\nprint(sorted(set({libraries!r}) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", "\n".join([*statements, check])],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return ast.literal_eval(result.stdout.splitlines()[-1])  # the statements may print too


def test_the_workflow_imports_no_torch_at_its_top() -> None:
    """The ``dspo`` imports of the Snakefile and its rules load neither torch nor the model
    libraries (the dry run without torch, tests/workflow/test_dag_imports.py, covers the
    config check's imports too)."""
    repo = PACKAGE.parent
    sources = [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]
    statement = re.compile(r"^(?:from dspo\S* import (?:\([^)]*\)|.+)|import dspo\S*.*)$", re.M)
    imports = [line for path in sources for line in statement.findall(path.read_text())]
    assert any("dspo.objectives" in line for line in imports), imports
    loaded = _loaded_after(imports, ("torch", "transformers", "diffusers", "accelerate"))
    assert loaded == [], f"{loaded} after:\n" + "\n".join(imports)


# The modules of the workflow's jobs that load no model: the gathers of the cache and of
# DDSPO's pairs, a kept step's copy, the rewards and the Inception Score. diffusers (with
# torch._dynamo and peft, which it imports) costs about 3 s of CPU a job above torch's 2 s, so
# these take it only inside the functions that load a pipeline.
NO_MODEL_JOBS = (
    "dspo.data.cache_gather",
    "dspo.data.ddspo",
    "dspo.training.step_models",
    "dspo.rewards",
    "dspo.evaluation.quality",
)


def test_the_jobs_that_load_no_model_import_no_model_library() -> None:
    imports = [f"import {name}" for name in NO_MODEL_JOBS]
    loaded = _loaded_after(imports, ("diffusers", "transformers", "peft"))
    assert loaded == [], f"{loaded} after:\n" + "\n".join(imports)


def test_the_toy_worlds_score_and_quality_jobs_run_without_torch(tmp_path: Path) -> None:
    """Their rewards and classifier are numpy's (`dspo.rewards.WITHOUT_TORCH`,
    `dspo.evaluation.quality.WITHOUT_TORCH`), and torch's import would be most of such a
    job's CPU: `dspo score` and `dspo quality` set torch up only for a model that needs it."""
    from dspo.evaluation import quality
    from dspo.rewards import needs_torch

    assert needs_torch({"pick": {"kind": "pickscore"}, "oracle": {"kind": "toy_oracle"}})
    assert quality.needs_torch({"classifier": "inception"})
    rewards = {"oracle": {"kind": "toy_oracle"}, "bvqa": {"kind": "toy_bvqa"}}
    classifier = {"classifier": "toy", "splits": 1, "batch_size": 8, "reference": None}
    jobs = [
        ["score", "--name", "dspo", "--params", json.dumps(rewards), "--out", "scores.parquet"],
        ["quality", "--name", "dspo", "--params", json.dumps(classifier), "--out", "quality.csv"],
    ]
    statements = [
        "import os",
        "from tests.cli.test_images import make_set",
        f"os.chdir({str(tmp_path)!r})",
        "from pathlib import Path",
        "manifest = str(make_set(Path('images'), 'dspo', 'parti'))",
        "from dspo.cli.commands import main",
        *(f"main({job!r} + ['--manifest', manifest])" for job in jobs),
    ]
    assert _loaded_after(statements, ("torch",)) == []
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 6  # 3 images x 2 rewards
    assert (tmp_path / "quality.csv").read_text().startswith("model,")
