"""The shape of the package: a small pinned public surface, two planes kept apart, no import cycles."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

import rule_engine

PACKAGE = Path(rule_engine.__file__).parent

# Top-level packages (or modules) of rule_engine, by plane.
DATA_PLANE = {"bundle", "evaluation", "serving", "errors", "clock", "logs"}  # logs: the library's silent loggers
CONTROL_PURE = {"control", "health"}
CONTROL_IO = {"deployment", "stores"}
EDGES = {"cli", "testing", "server", "analysis", "observability"}
KNOWN = DATA_PLANE | CONTROL_PURE | CONTROL_IO | EDGES | {"__init__"}

MAX_MODULE_LINES = 500
# 300 before the operator lifecycle (issue 11): pause/resume/abort/retry/undo/cancel, activate's new
# options and pin/unpin are public one-line delegations (def, docstring, call) the facade must expose.
MAX_MANAGER_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists()


def _resolve(node: ast.ImportFrom, importer: str, importer_is_package: bool) -> list[str]:
    """Every rule_engine module an ``from ... import ...`` statement names, relative imports included."""
    if node.level:
        base = importer.split(".")
        if not importer_is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join([*base, node.module] if node.module else base)
    else:
        module = node.module or ""
    if not (module == "rule_engine" or module.startswith("rule_engine.")):
        return []
    found = [module]
    for alias in node.names:
        candidate = f"{module}.{alias.name}"
        if _is_package(candidate) or (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists():
            found.append(candidate)  # `from rule_engine import manager` names the module rule_engine.manager
    return found


def _imports(path: Path, *, runtime_only: bool) -> set[str]:
    """The rule_engine modules ``path`` imports.

    With ``runtime_only``: only what runs at import time (module level, inside if/try/with, but not
    under ``if TYPE_CHECKING`` nor inside functions); otherwise every import anywhere in the file.
    """
    tree = ast.parse(path.read_text())
    importer = _module_name(path)
    is_package = path.name == "__init__.py"
    names: set[str] = set()

    def take(node: ast.stmt) -> None:
        if isinstance(node, ast.ImportFrom):
            names.update(_resolve(node, importer, is_package))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("rule_engine"))

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            take(node)
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)

    if runtime_only:
        visit(tree.body)
    else:
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt):
                take(node)
    return names


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_plane() -> None:
    """A new top-level package must say which plane it is in (edit the sets above)."""
    assert {_top(_module_name(p)) for p in MODULES} <= KNOWN


def test_the_import_resolver_sees_every_form() -> None:
    """The checks below would be blind if `from rule_engine import x` or relative imports were missed."""
    source = PACKAGE / "deployment" / "manager.py"
    seen = _imports(source, runtime_only=False)
    assert "rule_engine.control.transitions" in seen
    reads = _imports(PACKAGE / "deployment" / "reads.py", runtime_only=False)
    assert any(m.startswith("rule_engine.serving") for m in reads)
    node = ast.parse("from ..serving import routing").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert "rule_engine.serving.routing" in _resolve(node, "rule_engine.deployment.manager", False)
    node = ast.parse("from rule_engine import errors").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert "rule_engine.errors" in _resolve(node, "rule_engine.x", False)


@pytest.mark.parametrize("module", [p for p in MODULES if _top(_module_name(p)) in DATA_PLANE], ids=str)
def test_data_plane_never_imports_the_control_plane_or_the_edges(module: Path) -> None:
    """Bundle, evaluation and serving modules import only the data plane, in any form, even for typing."""
    offenders = {m for m in _imports(module, runtime_only=False) if _top(m) not in DATA_PLANE | {"__init__"}}
    offenders.discard("rule_engine")
    assert offenders == set()


@pytest.mark.parametrize("module", [p for p in MODULES if _top(_module_name(p)) in CONTROL_PURE], ids=str)
def test_pure_control_plane_never_imports_io_or_edges(module: Path) -> None:
    """control/ and health/ plan and judge; they import no manager and no edge (health reads stores only by type)."""
    allowed = DATA_PLANE | CONTROL_PURE | {"stores"}
    offenders = {m for m in _imports(module, runtime_only=False) if _top(m) not in allowed}
    offenders.discard("rule_engine")
    assert offenders == set()


def test_no_import_cycles() -> None:
    """No module imports itself back through others at import time."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, runtime_only=True) if m != name and m != "rule_engine"}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_modules_stay_small() -> None:
    """No module grows past ~500 lines; DeploymentManager itself stays a facade."""
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in MODULES}
    assert {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES} == {}


def test_the_manager_is_a_facade() -> None:
    """DeploymentManager delegates; its class body stays under ~300 lines."""
    tree = ast.parse((PACKAGE / "deployment" / "manager.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeploymentManager"]
    assert cls.end_lineno is not None
    assert cls.end_lineno - cls.lineno + 1 <= MAX_MANAGER_LINES


def test_all_public_names_are_exported() -> None:
    """rule_engine.__all__ is exactly its public, non-module names, sorted (httpx's test_exported_members)."""
    public = sorted(
        name
        for name, value in vars(rule_engine).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    assert rule_engine.__all__ == public


def test_public_surface_is_pinned() -> None:
    """The public surface changes only on purpose: this list is edited with it."""
    assert rule_engine.__all__ == EXPORTED


def test_init_holds_no_logic() -> None:
    """rule_engine/__init__.py re-exports only: imports, __all__, __version__."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.ImportFrom | ast.Import):
            continue
        assert isinstance(node, ast.Assign), ast.unparse(node)
        assert [t.id for t in node.targets if isinstance(t, ast.Name)] in (["__all__"], ["__version__"])


def test_every_error_derives_from_the_one_root() -> None:
    """Every exception class the package exports is a RuleEngineError."""
    for name in rule_engine.__all__:
        obj = getattr(rule_engine, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, rule_engine.RuleEngineError), name


def test_the_library_never_configures_logging() -> None:
    """Only the CLI (and the server it starts) may configure structlog or logging output."""
    for module in MODULES:
        top = _top(_module_name(module))
        if top in ("cli", "server"):
            continue
        text = module.read_text()
        assert "structlog.configure" not in text, module
        assert "logging.basicConfig" not in text, module
        assert "print(" not in text, module


EXPORTED = [
    "ABTest",
    "ActivationTimeNotReachedError",
    "AuditEntry",
    "BlueGreen",
    "BundleLimits",
    "BundleTestFailure",
    "BundleTrustError",
    "BundleValidationError",
    "Canary",
    "Clock",
    "CompiledRule",
    "ConflictError",
    "Decision",
    "DeploymentConfig",
    "DeploymentError",
    "DeploymentEvent",
    "DeploymentInfo",
    "DeploymentManager",
    "DeploymentState",
    "ExperimentReport",
    "HealthMetrics",
    "HealthThresholds",
    "HookPoint",
    "InvalidStrategyError",
    "InvalidTransitionError",
    "NoPreviousVersionError",
    "PolicyMismatchError",
    "Problem",
    "RolloutInProgressError",
    "RolloutStatus",
    "RuleBundle",
    "RuleEngine",
    "RuleEngineError",
    "RuleEvaluationError",
    "RuleQuery",
    "RuleTable",
    "Scheduled",
    "ServingSnapshot",
    "ShadowOptions",
    "Signature",
    "StateStore",
    "StoreError",
    "StoreURLError",
    "Strategy",
    "SystemClock",
    "TickReport",
    "TrustPolicy",
    "VariantReport",
    "Verdict",
    "VersionId",
    "VersionNotFoundError",
    "compute_request_hash",
    "load_bundle",
    "open_store",
    "parse_bundle",
    "run_bundle_tests",
    "sign_bundle",
    "verify_bundle",
]
