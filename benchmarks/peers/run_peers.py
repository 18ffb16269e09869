"""Run every available peer script in its own venv and collect their JSON.

    .venv/bin/python benchmarks/peers/run_peers.py [--bundle PATH] [--only NAME ...] [--json PATH]

Run with the project venv. A peer whose venv (``benchmarks/.venvs/<name>``) is missing, or
whose script fails / times out / prints no JSON, is reported as unavailable with the reason
rather than raising. Peers run one after another (never in parallel: 2-core machine).

From the main benchmark::

    from peers.run_peers import run_peers, peer_rows
    results = run_peers()            # {name: {"peer", "version", "ns", "baseline_ns", ...}}
    for row in peer_rows(results):   # one row per (peer, case), with ratios vs H and bare call
        ...

Each peer's ratios use the ``H`` / ``bare_call`` baselines measured in that peer's own
process (same interpreter build, same moment), so they are comparable to our figures
expressed against our own in-process H / bare-call baselines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
REPO_DIR = BENCH_DIR.parent
VENVS_DIR = BENCH_DIR / ".venvs"


@dataclass(frozen=True)
class Peer:
    name: str  # venv name under benchmarks/.venvs
    script: str  # file in benchmarks/peers
    needs_bundle: bool = False
    timeout_s: float = 90.0
    project_venv: bool = False  # run with this interpreter (our own figures), not benchmarks/.venvs
    cell: bool = False  # an evaluate-case peer: reports "evaluate" and "prepare" (format_cell_table)
    venv: str | None = None  # venv name when it differs from ``name``


PEERS: tuple[Peer, ...] = (
    Peer("pypi_rule_engine", "pypi_rule_engine.py", needs_bundle=True, timeout_s=600.0),
    Peer("unleash", "unleash_rollout.py"),
    Peer("launchdarkly", "launchdarkly_rollout.py"),
    Peer("growthbook", "growthbook_rollout.py"),
    # issue 14 item 6: the evaluate case (10 rules of one cell, first match at the 6th), with prepare
    Peer("ours", "ours_cell.py", project_venv=True, cell=True),
    Peer("zen_engine", "zen_engine.py", cell=True),
    Peer("cedarpy", "cedarpy_peer.py", cell=True),
    Peer("cel", "cel_peer.py", cell=True),
    Peer("json_logic", "json_logic_peer.py", cell=True),
    Peer("pypi_rule_engine_cell", "pypi_rule_engine_cell.py", cell=True, venv="pypi_rule_engine"),
)


def venv_python(name: str) -> Path:
    return VENVS_DIR / name / "bin" / "python"


def peer_python(peer: Peer) -> Path:
    return Path(sys.executable) if peer.project_venv else venv_python(peer.venv or peer.name)


def available_peers() -> list[str]:
    return [p.name for p in PEERS if peer_python(p).exists()]


def _synthetic_bundle_file(directory: str) -> str:
    sys.path.insert(0, str(REPO_DIR / "bundles"))
    try:
        from generate_synthetic import synthetic_bundle
    finally:
        sys.path.pop(0)
    path = Path(directory) / "synthetic.json"
    path.write_text(json.dumps(synthetic_bundle()), encoding="utf-8")
    return str(path)


def run_peer(peer: Peer, bundle_path: str | None = None, *, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run one peer script; its JSON object, or ``{"peer": name, "unavailable": reason}``."""
    python = peer_python(peer)
    if not python.exists():
        return {
            "peer": peer.name,
            "unavailable": f"no venv at {python.parent.parent} (run: bash benchmarks/peers/setup_peers.sh)",
        }
    cmd = [str(python), str(PEERS_DIR / peer.script)]
    if peer.needs_bundle:
        if bundle_path is None:
            raise ValueError(f"{peer.name} needs a bundle path")
        cmd.append(bundle_path)
    cmd.extend(extra_args)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=peer.timeout_s,
            cwd=str(PEERS_DIR),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"peer": peer.name, "unavailable": f"timed out after {peer.timeout_s:.0f} s"}
    wall_s = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {
            "peer": peer.name,
            "unavailable": f"exit {proc.returncode}: " + " | ".join(tail),
        }
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return {"peer": peer.name, "unavailable": f"bad JSON: {exc}"}
    result["wall_s"] = round(wall_s, 2)
    return result


def run_peers(
    bundle_path: str | None = None,
    *,
    only: Sequence[str] | None = None,
    peer_args: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the selected (default: all) peers; ``{venv name: JSON object or unavailable}``.

    ``bundle_path`` defaults to a freshly generated default synthetic bundle (10k rules).
    """
    selected = [p for p in PEERS if only is None or p.name in only]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        if bundle_path is None and any(p.needs_bundle and peer_python(p).exists() for p in selected):
            bundle_path = _synthetic_bundle_file(tmp)
        for peer in selected:
            args = (peer_args or {}).get(peer.name, ())
            results[peer.name] = run_peer(peer, bundle_path, extra_args=args)
    return results


@dataclass(frozen=True)
class PeerRow:
    peer: str
    version: str
    case: str
    ns: float
    x_h: float | None  # ratio vs the peer process's own bare mmh3.hash (H)
    x_call: float | None  # ratio vs the peer process's own bare method call


def peer_rows(results: Mapping[str, Mapping[str, Any]]) -> list[PeerRow]:
    rows: list[PeerRow] = []
    for res in results.values():
        if "unavailable" in res:
            continue
        base = res.get("baseline_ns", {})
        h, call = base.get("H"), base.get("bare_call")
        for case, ns in res["ns"].items():
            rows.append(
                PeerRow(
                    peer=res["peer"],
                    version=res["version"],
                    case=case,
                    ns=ns,
                    x_h=ns / h if h else None,
                    x_call=ns / call if call else None,
                )
            )
    return rows


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"{'peer':<24} {'case':<24} {'ns/call':>13} {'x H':>10} {'x call':>10}"]
    for r in peer_rows(results):
        xh = f"{r.x_h:.1f}x" if r.x_h is not None else "-"
        xc = f"{r.x_call:.1f}x" if r.x_call is not None else "-"
        lines.append(f"{r.peer + ' ' + r.version:<24} {r.case:<24} {r.ns:>13.1f} {xh:>10} {xc:>10}")
    for name, res in results.items():
        if "unavailable" in res:
            lines.append(f"{name:<24} UNAVAILABLE: {res['unavailable']}")
        elif "mismatch" in res:
            lines.append(f"{name:<24} MISMATCH: {res['mismatch']}")
        else:
            b = res.get("baseline_ns", {})
            lines.append(
                f"  ({res['peer']}: in-process H = {b.get('H', '-')} ns, "
                f"bare call = {b.get('bare_call', '-')} ns, "
                f"network attempts = {res.get('network_attempts', '?')}, "
                f"wall {res.get('wall_s', '?')} s)"
            )
    return "\n".join(lines)


CELL_PEERS = frozenset(p.name for p in PEERS if p.cell)


def format_cell_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The evaluate-case peers side by side (Markdown): evaluate and prepare, ns and x own H."""
    lines = [
        "| peer | version | evaluate ns | evaluate x H | prepare ns | prepare x H | H ns |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        if name not in CELL_PEERS:
            continue
        if "unavailable" in res or "mismatch" in res:
            what = "UNAVAILABLE: " + res["unavailable"] if "unavailable" in res else "MISMATCH: " + res["mismatch"]
            lines.append(f"| {res.get('peer', name)} | {res.get('version', '-')} | {what} | | | | |")
            continue
        h = res["baseline_ns"].get("H")
        ev, prep = res["ns"]["evaluate"], res["ns"]["prepare"]
        ev_h, prep_h = (f"{ns / h:,.1f}x" if h else "-" for ns in (ev, prep))
        lines.append(f"| {res['peer']} | {res['version']} | {ev:,.0f} | {ev_h} | {prep:,.0f} | {prep_h} | {h} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the peer benchmarks in their venvs.")
    parser.add_argument("--bundle", help="synthetic bundle JSON (default: generate one)")
    parser.add_argument("--only", nargs="+", choices=[p.name for p in PEERS])
    parser.add_argument("--json", metavar="PATH", help="write the collected results as JSON")
    args = parser.parse_args(argv)
    results = run_peers(args.bundle, only=args.only)
    print(format_table(results))
    if CELL_PEERS & results.keys():
        print()
        print(format_cell_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
