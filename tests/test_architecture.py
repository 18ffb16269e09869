"""The shape of the package: a small pinned public surface, and two planes kept apart."""

from __future__ import annotations

import ast
from pathlib import Path

import rule_engine

PACKAGE = Path(rule_engine.__file__).parent

# The data plane: pure, immutable, no I/O. It must never import the control plane.
DATA_PLANE = {
    "bundle",
    "_bundle_values",
    "_bundle_errors",
    "_bundle_json",
    "_bundle_checks",
    "compiler",
    "table",
    "routing",
    "_regex",
    "snapshot",
    "errors",
}
CONTROL_PLANE = {
    "manager",
    "control",
    "stores",
    "hooks",
    "health",
    "ledger",
    "records",
    "states",
    "strategies",
    "views",
    "background",
    "cli",
    "demo",
}


def _imports_of(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rule_engine"):
            names.add(node.module.split(".")[1] if "." in node.module else "")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rule_engine."):
                    names.add(alias.name.split(".")[1])
    return names


def test_data_plane_never_imports_the_control_plane() -> None:
    """Bundle, compiler, table, routing and snapshot modules import nothing from the control plane."""
    offenders = {
        name: sorted(_imports_of(PACKAGE / f"{name}.py") & CONTROL_PLANE)
        for name in DATA_PLANE
        if (PACKAGE / f"{name}.py").exists()
    }
    # snapshot.py names the health recorder only for type checking (under TYPE_CHECKING).
    offenders["snapshot"] = [m for m in offenders.get("snapshot", []) if m != "health"]
    assert {k: v for k, v in offenders.items() if v} == {}


def test_public_surface_is_pinned() -> None:
    """Users import from rule_engine only; __all__ is explicit, sorted, and every name exists."""
    exported = rule_engine.__all__
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(rule_engine, name), name
    for name in (
        "DeploymentManager",
        "RuleEngine",
        "RuleTable",
        "RuleBundle",
        "load_bundle",
        "compute_request_hash",
        "BlueGreen",
        "Canary",
        "ABTest",
        "Scheduled",
        "HealthThresholds",
        "DeploymentState",
        "RuleEngineError",
        "BundleValidationError",
    ):
        assert name in exported, name


def test_every_error_derives_from_the_one_root() -> None:
    """Every exception class the package exports is a RuleEngineError."""
    for name in rule_engine.__all__:
        obj = getattr(rule_engine, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, rule_engine.RuleEngineError), name


def test_the_library_never_configures_structlog() -> None:
    """Only the CLI may call structlog.configure (a library must not)."""
    for module in PACKAGE.rglob("*.py"):
        if module.name in ("cli.py", "logging_setup.py", "demo.py"):
            continue
        assert "structlog.configure" not in module.read_text(), module
