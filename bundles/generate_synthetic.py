"""Generate large synthetic rule bundles (and matching events) for benchmarks.

Module use::

    from generate_synthetic import matching_event, synthetic_bundle
    bundle = synthetic_bundle()  # 50 agents x 20 flows x 10 rules = 10,000 rules
    event = matching_event(7, 3)  # rules 1..5 of (agent-007, flow-03) fail, rule 6 matches

Script use::

    python bundles/generate_synthetic.py --agents 50 --flows 20 --rules-per-pair 10 -o out.json

Design (so that ``matching_event`` can be computed without the bundle):

* every rule names exactly one agent and one flow; the rules of one (agent, flow) pair
  have distinct priorities ``1000, 990, 980, ...`` (rank 1 = highest priority);
* everything random is drawn from ``random.Random(f"{seed}:{agent}:{flow}")``, so one
  pair's rules and events can be regenerated on their own;
* each field has a *ladder* of per-rank values chosen so that the value that makes the
  rank-``m`` rule match makes every higher-priority rule (rank ``< m``) fail *on its
  value*: ``gte`` thresholds decrease with rank, ``lt`` thresholds increase with rank,
  string sets / prefixes / enum values are disjoint across ranks, and each field also
  has a *neutral* value that no rank accepts. Every rule has at least one such
  "keyed" leaf in a conjunctive position (``any`` has only keyed alternatives, ``not``
  sits inside an ``all`` next to a keyed leaf), so a rule can only match its own rank's
  event. The event always carries every field any rule looks at.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SHAPES",
    "agent_name",
    "flow_name",
    "matching_event",
    "pair_rule_ids",
    "synthetic_bundle",
]

JSON = dict[str, Any]

#: The rule shapes drawn for each rank, with the decision they produce.
SHAPES: tuple[str, ...] = (
    "risk_gte",  # numeric gte on a top-level field
    "age_lt",  # numeric lt on a nested field
    "country_in",  # in on a string list
    "tier_eq",  # eq on a string
    "path_prefix",  # starts_with
    "amount_and_verified",  # all of two leaves (numeric gte + eq on a bool)
    "device_or_tier",  # any of two leaves
    "country_not_allowlisted",  # all[in, not(eq bool)]
)

_PRIORITY_TOP = 1000
_PRIORITY_STEP = 10

_COUNTRIES = [
    "KP",
    "IR",
    "SY",
    "CU",
    "RU",
    "BY",
    "VE",
    "MM",
    "AF",
    "IQ",
    "LY",
    "SD",
    "SO",
    "YE",
    "ZW",
    "NI",
    "ER",
    "CF",
    "CD",
    "ML",
    "SS",
    "LB",
    "HT",
    "PK",
    "NG",
    "KE",
    "GH",
    "TZ",
    "UG",
    "ET",
    "CM",
    "CI",
    "SN",
    "BD",
    "VN",
    "PH",
    "ID",
    "TH",
    "MY",
    "KH",
    "LA",
    "NP",
    "LK",
    "MN",
    "KZ",
]
_NEUTRAL_COUNTRY = "US"
_TIERS = [
    "gold",
    "silver",
    "platinum",
    "enterprise",
    "pro",
    "team",
    "startup",
    "edu",
    "nonprofit",
    "partner",
    "internal",
    "trial",
]
_NEUTRAL_TIER = "basic"
_OSES = [
    "ios",
    "android",
    "windows",
    "macos",
    "linux",
    "chromeos",
    "tvos",
    "watchos",
    "fireos",
    "tizen",
]
_NEUTRAL_OS = "unknown"
_PATH_WORDS = [
    "payments",
    "admin",
    "checkout",
    "account",
    "search",
    "reports",
    "export",
    "upload",
    "webhooks",
    "graphql",
    "billing",
    "orders",
    "invoices",
    "refunds",
    "transfers",
]
_NEUTRAL_PATH = "/healthz"


def agent_name(index: int) -> str:
    """``agent-007`` style agent id."""
    return f"agent-{index:03d}"


def flow_name(index: int) -> str:
    """``flow-03`` style flow id."""
    return f"flow-{index:02d}"


def _distinct(pool: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` distinct values drawn from ``pool`` (suffixed when the pool runs out)."""
    values = list(pool)
    rng.shuffle(values)
    round_no = 1
    while len(values) < count:
        values.extend(f"{v}{round_no}" for v in pool)
        round_no += 1
    return values[:count]


@dataclass(frozen=True)
class _PairPlan:
    """Per-rank ladders of values and the shape of each rank's rule, for one pair."""

    agent: str
    flow: str
    shapes: tuple[str, ...]
    risk: tuple[float, ...]  # gte thresholds, strictly decreasing with rank
    age: tuple[int, ...]  # lt thresholds, strictly increasing with rank
    amount: tuple[float, ...]  # gte thresholds, strictly decreasing with rank
    countries: tuple[tuple[str, ...], ...]  # disjoint per rank
    tiers: tuple[str, ...]  # distinct per rank
    oses: tuple[str, ...]  # distinct per rank
    prefixes: tuple[str, ...]  # distinct per rank, none a prefix of another
    verified: tuple[bool, ...]
    rps: tuple[int, ...]


@functools.lru_cache(maxsize=4096)
def _plan(seed: int, agent_index: int, flow_index: int, rules_per_pair: int) -> _PairPlan:
    agent, flow = agent_name(agent_index), flow_name(flow_index)
    rng = random.Random(f"{seed}:{agent}:{flow}")
    n = rules_per_pair
    shapes = tuple(rng.choice(SHAPES) for _ in range(n))
    risk = tuple(v / 1000 for v in sorted(rng.sample(range(50, 1000), n), reverse=True))
    age = tuple(sorted(rng.sample(range(1, 3650), n)))
    amount = tuple(v / 100 for v in sorted(rng.sample(range(1_000, 5_000_000), n), reverse=True))
    per_rank = 2 if 2 * n <= len(_COUNTRIES) else 1
    pool = _distinct(_COUNTRIES, per_rank * n, rng)
    countries = tuple(tuple(pool[i * per_rank : (i + 1) * per_rank]) for i in range(n))
    tiers = tuple(_distinct(_TIERS, n, rng))
    oses = tuple(_distinct(_OSES, n, rng))
    prefixes = tuple(f"/api/{w}/" for w in _distinct(_PATH_WORDS, n, rng))
    verified = tuple(rng.random() < 0.5 for _ in range(n))
    rps = tuple(rng.choice((1, 5, 10, 50)) for _ in range(n))
    return _PairPlan(agent, flow, shapes, risk, age, amount, countries, tiers, oses, prefixes, verified, rps)


def _leaf(field: str, op: str, value: Any) -> JSON:
    return {"field": field, "op": op, "value": value}


def _rule(plan: _PairPlan, rank: int) -> JSON:
    """The rule of rank ``rank`` (0-based: 0 is tried first) of one pair."""
    shape = plan.shapes[rank]
    when: JSON
    then: JSON
    if shape == "risk_gte":
        when = _leaf("risk_score", "gte", plan.risk[rank])
        then = {"decision": "deny", "reason": "risk score too high"}
    elif shape == "age_lt":
        when = _leaf("user.account_age_days", "lt", plan.age[rank])
        then = {"decision": "challenge", "reason": "new account"}
    elif shape == "country_in":
        when = _leaf("geo.country", "in", list(plan.countries[rank]))
        then = {"decision": "deny", "reason": "blocked country"}
    elif shape == "tier_eq":
        when = _leaf("user.tier", "eq", plan.tiers[rank])
        then = {"decision": "allow", "reason": f"{plan.tiers[rank]} tier"}
    elif shape == "path_prefix":
        when = _leaf("request.path", "starts_with", plan.prefixes[rank])
        then = {"decision": "throttle", "params": {"rps": plan.rps[rank]}}
    elif shape == "amount_and_verified":
        when = {
            "all": [
                _leaf("txn.amount", "gte", plan.amount[rank]),
                _leaf("user.verified", "eq", plan.verified[rank]),
            ]
        }
        then = {"decision": "review", "reason": "large transaction"}
    elif shape == "device_or_tier":
        when = {
            "any": [
                _leaf("device.os", "eq", plan.oses[rank]),
                _leaf("user.tier", "eq", plan.tiers[rank]),
            ]
        }
        then = {"decision": "throttle", "params": {"rps": plan.rps[rank]}}
    elif shape == "country_not_allowlisted":
        when = {
            "all": [
                _leaf("geo.country", "in", list(plan.countries[rank])),
                {"not": _leaf("user.allowlisted", "eq", True)},
            ]
        }
        then = {"decision": "deny", "reason": "blocked country, not allowlisted"}
    else:  # pragma: no cover - SHAPES is closed
        raise AssertionError(shape)
    return {
        "id": f"{plan.agent}.{plan.flow}.r{rank + 1:02d}",
        "priority": _PRIORITY_TOP - _PRIORITY_STEP * rank,
        "agents": [plan.agent],
        "flows": [plan.flow],
        "when": when,
        "then": then,
    }


def pair_rule_ids(agent_index: int, flow_index: int, *, rules_per_pair: int = 10) -> list[str]:
    """Rule ids of one pair, in priority order (rank 1 first)."""
    a, f = agent_name(agent_index), flow_name(flow_index)
    return [f"{a}.{f}.r{rank:02d}" for rank in range(1, rules_per_pair + 1)]


def matching_event(
    agent_index: int,
    flow_index: int,
    match_at: int | None = 6,
    *,
    seed: int = 0,
    rules_per_pair: int = 10,
) -> JSON:
    """An event for (agent, flow) whose first match, in priority order, is rule ``match_at``.

    Rules ``1 .. match_at-1`` of the pair fail on values (every field is present), rule
    ``match_at`` matches. ``match_at=None`` gives an event no rule of the pair matches
    (the bundle default decides). ``seed``/``rules_per_pair`` must be those the bundle
    was generated with.
    """
    if match_at is not None and not 1 <= match_at <= rules_per_pair:
        raise ValueError(f"match_at must be in 1..{rules_per_pair} or None, got {match_at}")
    plan = _plan(seed, agent_index, flow_index, rules_per_pair)
    # Neutral values: fail every rank's keyed leaf.
    risk = 0.0
    age = 100_000
    amount = 0.0
    country = _NEUTRAL_COUNTRY
    tier = _NEUTRAL_TIER
    os_name = _NEUTRAL_OS
    path = _NEUTRAL_PATH
    verified = True
    allowlisted = False
    if match_at is not None:
        m = match_at - 1
        shape = plan.shapes[m]
        if shape == "risk_gte":
            risk = plan.risk[m]
        elif shape == "age_lt":
            age = plan.age[m] - 1
        elif shape in ("country_in", "country_not_allowlisted"):
            country = plan.countries[m][-1]
            allowlisted = False
        elif shape == "tier_eq":
            tier = plan.tiers[m]
        elif shape == "path_prefix":
            path = plan.prefixes[m] + "v1/items/42"
        elif shape == "amount_and_verified":
            amount = plan.amount[m]
            verified = plan.verified[m]
        elif shape == "device_or_tier":
            os_name = plan.oses[m]
    return {
        "agent_id": plan.agent,
        "flow_id": plan.flow,
        "risk_score": risk,
        "user": {
            "id": f"u-{agent_index:03d}{flow_index:02d}",
            "account_age_days": age,
            "tier": tier,
            "verified": verified,
            "allowlisted": allowlisted,
        },
        "geo": {"country": country, "city": "Springfield"},
        "device": {"os": os_name},
        "request": {"path": path, "method": "POST"},
        "txn": {"amount": amount, "currency": "EUR"},
    }


def expected_outcome(
    agent_index: int,
    flow_index: int,
    match_at: int | None = 6,
    *,
    seed: int = 0,
    rules_per_pair: int = 10,
) -> tuple[str, str | None]:
    """(decision, rule_id) an evaluator must return for ``matching_event`` with the same args."""
    if match_at is None:
        return ("allow", None)
    plan = _plan(seed, agent_index, flow_index, rules_per_pair)
    rule = _rule(plan, match_at - 1)
    return (rule["then"]["decision"], rule["id"])


def synthetic_bundle(agents: int = 50, flows: int = 20, rules_per_pair: int = 10, seed: int = 0) -> JSON:
    """A valid bundle with ``agents * flows * rules_per_pair`` rules (10,000 by default)."""
    if agents < 1 or flows < 1 or rules_per_pair < 1:
        raise ValueError("agents, flows and rules_per_pair must all be >= 1")
    rules: list[JSON] = []
    for a in range(agents):
        for f in range(flows):
            plan = _plan(seed, a, f, rules_per_pair)
            rules.extend(_rule(plan, rank) for rank in range(rules_per_pair))
    rng = random.Random(seed)
    samples = [(0, 0), (agents - 1, flows - 1), (rng.randrange(agents), rng.randrange(flows))]
    tests: list[JSON] = []
    for a, f in samples:
        match_at = min(6, rules_per_pair)
        decision, rule_id = expected_outcome(a, f, match_at, seed=seed, rules_per_pair=rules_per_pair)
        tests.append(
            {
                "name": f"{agent_name(a)}/{flow_name(f)}: rule {match_at} is the first match",
                "event": matching_event(a, f, match_at, seed=seed, rules_per_pair=rules_per_pair),
                "expect": {"decision": decision, "rule_id": rule_id},
            }
        )
    tests.append(
        {
            "name": f"{agent_name(0)}/{flow_name(0)}: nothing matches, default decides",
            "event": matching_event(0, 0, None, seed=seed, rules_per_pair=rules_per_pair),
            "expect": {"decision": "allow"},
        }
    )
    return {
        "bundle_id": "synthetic",
        "version": "1.0.0",
        "description": (
            f"Synthetic benchmark bundle: {agents} agents x {flows} flows x "
            f"{rules_per_pair} rules per pair (seed {seed})."
        ),
        "default": {"decision": "allow"},
        "rules": rules,
        "tests": tests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--flows", type=int, default=20)
    parser.add_argument("--rules-per-pair", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="-", help="output path ('-' = stdout)")
    parser.add_argument("--indent", type=int, default=None, help="JSON indent (default: compact)")
    args = parser.parse_args(argv)
    bundle = synthetic_bundle(args.agents, args.flows, args.rules_per_pair, args.seed)
    text = json.dumps(bundle, indent=args.indent)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        print(
            f"wrote {len(bundle['rules'])} rules, {len(bundle['tests'])} tests to {args.output}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
