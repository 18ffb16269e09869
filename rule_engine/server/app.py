"""The ASGI application of ``rule-engine serve``: reads, writes, evaluation, probes, metrics, dashboard.

Why FastAPI (on Starlette) and uvicorn: bundles are already pydantic v2 models, so request bodies are
validated by the same library and the OpenAPI document comes from the code; both are widely used and
maintained, and uvicorn runs it with one command. Manager calls are synchronous (they may touch the
store), so endpoints are plain ``def`` functions that FastAPI runs in its thread pool.

Security by default: ``serve`` binds 127.0.0.1; writes need ``Authorization: Bearer TOKEN`` (see
:mod:`rule_engine.server.auth`), reads too with ``read_auth``; the audit actor is the token's name;
bodies are limited to ``max_body_bytes``; every error is problem+json without a stack trace.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from rule_engine.clock import Clock, SystemClock
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.observability.metrics import DeliverySource, register
from rule_engine.observability.views import deploy_view, fleet_view, history_view, status_view, versions_view
from rule_engine.server import problems
from rule_engine.server.auth import Tokens
from rule_engine.server.feed import DashboardFeed, event_stream, webhook_state
from rule_engine.server.limits import BodyLimit
from rule_engine.server.operations import OPERATIONS, DeployBody, Operation, OperationBody, deploy
from rule_engine.server.problems import ApiProblem
from rule_engine.serving.engine import RuleEngine
from rule_engine.stores.deployments import summarize

__all__ = ["MAX_BATCH", "ServerSettings", "create_app"]

MAX_BATCH = 1000
DEFAULT_DEPLOYMENT = "default"
STATIC = files("rule_engine.server") / "static"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Limits and policy of the HTTP API (each documented in docs/operations.md)."""

    tokens: Tokens | None = None
    read_auth: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch: int = MAX_BATCH
    max_audit: int = 1000
    events_interval: float = 1.0
    max_event_secs: float = 300.0
    store_url: str = ""


class EvaluateBody(BaseModel):
    """One event (``event`` and ``key``) or a batch (``events`` and optional parallel ``keys``)."""

    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any] | None = None
    key: str | None = Field(default=None, max_length=1024)
    events: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_BATCH)
    keys: list[str | None] | None = Field(default=None, max_length=MAX_BATCH)


def create_app(
    managers: DeploymentManager | Mapping[str, DeploymentManager],
    settings: ServerSettings | None = None,
    *,
    clock: Clock | None = None,
    notifier: DeliverySource | Mapping[str, DeliverySource] | None = None,
) -> FastAPI:
    """The application over one manager (deployment ``default``) or several by name.

    ``notifier``: the webhook deliveries shown in status and metrics, one for all, or one per deployment name.
    """
    chosen = settings if settings is not None else ServerSettings()
    by_name: dict[str, DeploymentManager] = (
        dict(managers) if isinstance(managers, Mapping) else {DEFAULT_DEPLOYMENT: managers}
    )
    if not by_name:
        raise ValueError("create_app needs at least one manager")
    engines = {name: RuleEngine(manager) for name, manager in by_name.items()}
    registry = CollectorRegistry(auto_describe=True)
    notifiers: Mapping[str, DeliverySource] = (
        notifier if isinstance(notifier, Mapping) else {} if notifier is None else dict.fromkeys(by_name, notifier)
    )
    for name, manager in by_name.items():
        register(manager, registry, deployment=name, notifier=notifiers.get(name))

    def extra(name: str) -> dict[str, Any]:
        delivering = notifiers.get(name)
        return {} if delivering is None else webhook_state(delivering)

    feed = DashboardFeed(by_name, chosen.store_url, clock or SystemClock(), chosen.events_interval, extra)

    app = FastAPI(
        title="rule_engine",
        version="1",
        summary="Ship rule bundles to live evaluators: status, rollouts, evaluation.",
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
    )
    problems.install(app)
    app.add_middleware(BodyLimit, limit=chosen.max_body_bytes)

    def deployment(deployment: Annotated[str | None, Query(max_length=128)] = None) -> str:
        """``?deployment=NAME``; left out (or ``default`` on a server of one): the only one, else a 400 naming them."""
        if deployment == DEFAULT_DEPLOYMENT and len(by_name) == 1:
            deployment = None
        name = deployment or (
            next(iter(by_name)) if len(by_name) == 1 else DEFAULT_DEPLOYMENT if DEFAULT_DEPLOYMENT in by_name else None
        )
        if name is None:
            raise ApiProblem(
                400,
                "deployment-required",
                f"this server serves {len(by_name)} deployments {sorted(by_name)}; name one with ?deployment=NAME",
                deployments=sorted(by_name),
            )
        if name not in by_name:
            raise ApiProblem(404, "deployment-not-found", f"no deployment {name!r}; known: {sorted(by_name)}")
        return name

    def actor_of(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if chosen.tokens is None:
            reason = "this server has no tokens file; start it with 'rule-engine serve --tokens FILE'"
        elif scheme.lower() != "bearer" or not token.strip():
            reason = "this needs 'Authorization: Bearer TOKEN' (make one with 'rule-engine token create NAME')"
        else:
            name = chosen.tokens.name_of(token.strip())
            if name is not None:
                return name
            reason = "the bearer token is not valid"
        problem = ApiProblem(401, "unauthorized", reason)
        problem.headers["WWW-Authenticate"] = 'Bearer realm="rule-engine"'
        raise problem

    def reader(request: Request) -> str | None:
        return actor_of(request) if chosen.read_auth else None

    Name = Annotated[str, Depends(deployment)]  # noqa: N806 - type aliases of dependencies
    Reader = Annotated[str | None, Depends(reader)]  # noqa: N806
    Writer = Annotated[str, Depends(actor_of)]  # noqa: N806

    # --- probes and metrics ----------------------------------------------------------------------

    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"description": "not ready (problem+json)"}})
    def readyz() -> Any:
        """Readiness: every deployment serves a version and its manager is not stale."""
        reasons = [
            f"{name}: {why}"
            for name, manager in by_name.items()
            for why in (
                "no version is active" if manager.get_active_version_id() is None else None,
                f"stale: {manager.stale}" if manager.stale else None,
            )
            if why
        ]
        if reasons:
            return problems.problem_response(503, "not-ready", "; ".join(reasons), "/readyz", reasons=reasons)
        return {
            "ready": True,
            "deployments": {
                n: {"active_version": m.get_active_version_id(), "revision": m.snapshot.revision}
                for n, m in by_name.items()
            },
        }

    @app.get("/metrics", tags=["probes"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (text exposition format), read from the managers at scrape time."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # --- reads -------------------------------------------------------------------------------------

    @app.get("/api/v1/deployments", tags=["reads"])
    def deployments(_: Reader) -> dict[str, Any]:
        """The deployments this server manages, with what each serves (as ``rule-engine deployments --json``)."""
        return {
            "deployments": [
                {**summarize(n, m.state).to_dict(), "active_version": m.get_active_version_id()}
                for n, m in by_name.items()
            ]
        }

    @app.get("/api/v1/status", tags=["reads"])
    def status(name: Name, _: Reader) -> dict[str, Any]:
        """What serves now, the rollout in progress and why it holds (the JSON of ``status --json``, and webhooks)."""
        view = status_view(by_name[name], chosen.store_url)
        delivering = notifiers.get(name)
        if delivering is not None:
            view["webhooks"] = webhook_state(delivering)["webhook_state"]
        return view

    @app.get("/api/v1/history", tags=["reads"])
    def history(name: Name, _: Reader, limit: Annotated[int, Query(ge=1, le=chosen.max_audit)] = 50) -> dict[str, Any]:
        """Versions in history and the audit trail (the JSON of ``history --json``)."""
        return history_view(by_name[name], limit)

    @app.get("/api/v1/versions", tags=["reads"])
    def versions(name: Name, _: Reader) -> dict[str, Any]:
        """Every version kept in history, with its strategy, state and health."""
        return versions_view(by_name[name])

    @app.get("/api/v1/audit", tags=["reads"])
    def audit(
        name: Name,
        _: Reader,
        limit: Annotated[int, Query(ge=1, le=chosen.max_audit)] = 100,
        version_id: Annotated[str | None, Query(max_length=512)] = None,
    ) -> dict[str, Any]:
        """The audit trail (who, when, from/to state, why), oldest first, optionally of one version."""
        return {"audit": [e.to_dict() for e in by_name[name].audit_log(version_id, limit)]}

    @app.get("/api/v1/experiment", tags=["reads"])
    def experiment(name: Name, _: Reader) -> dict[str, Any]:
        """The A/B test in progress: per-variant figures and the significance test (409 if none)."""
        return by_name[name].get_experiment_report().to_dict()

    @app.get("/api/v1/fleet", tags=["reads"])
    def fleet(name: Name, _: Reader) -> dict[str, Any]:
        """Every instance serving from this deployment's store (what it serves, when last seen) and convergence."""
        return fleet_view(by_name[name])

    @app.get("/api/v1/events", tags=["reads"], response_class=StreamingResponse)
    async def events(
        request: Request,
        name: Name,
        _: Reader,
        max_events: Annotated[int, Query(ge=1, le=100_000)] = 100_000,
    ) -> StreamingResponse:
        """Server-sent events: the dashboard payload now and whenever it changes (bounded stream)."""
        stream = event_stream(
            feed, name, request.is_disconnected, max_events=max_events, max_secs=chosen.max_event_secs
        )
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    # --- evaluation ----------------------------------------------------------------------------------

    @app.post("/api/v1/evaluate", tags=["evaluation"])
    def evaluate(body: EvaluateBody, name: Name, _: Reader) -> dict[str, Any]:
        """Decide one event (``event``, ``key``) or a batch (``events``, ``keys``) on the serving version."""
        engine = engines[name]
        if (body.event is None) == (body.events is None):
            raise ApiProblem(422, "invalid-request", "give exactly one of 'event' or 'events'")
        if body.events is None:
            if body.keys is not None:
                raise ApiProblem(422, "invalid-request", "'keys' goes with 'events'; use 'key' with 'event'")
            assert body.event is not None
            return engine.evaluate(body.event, key=body.key).as_dict()
        if len(body.events) > chosen.max_batch:
            raise ApiProblem(422, "batch-too-large", f"at most {chosen.max_batch} events per batch")
        if body.keys is not None and len(body.keys) != len(body.events):
            raise ApiProblem(422, "invalid-request", "'keys' must have one entry per event")
        keys = body.keys if body.keys is not None else [None] * len(body.events)
        return {"results": [engine.evaluate(e, key=k).as_dict() for e, k in zip(body.events, keys, strict=True)]}

    # --- writes ----------------------------------------------------------------------------------------

    @app.post("/api/v1/deploy", tags=["writes"], status_code=201)
    def deploy_bundle(body: DeployBody, name: Name, actor: Writer) -> dict[str, Any]:
        """Prepare a bundle as a new version and start it by its strategy (the JSON of ``deploy --json``)."""
        manager = by_name[name]
        version_id, strategy = deploy(manager, body, actor)
        return deploy_view(manager, version_id, strategy, chosen.store_url)

    for operation in OPERATIONS:
        _add_operation(app, operation, by_name, Name, Writer)

    # --- the dashboard -------------------------------------------------------------------------------

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(
            str(STATIC / "index.html"),
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    return app


def _add_operation(
    app: FastAPI, operation: Operation, by_name: dict[str, DeploymentManager], name_dep: Any, writer_dep: Any
) -> None:
    """``POST /api/v1/{operation}``: 501 when the manager lacks it, else run it as the token's name."""

    def endpoint(name: name_dep, actor: writer_dep, body: OperationBody | None = None) -> Any:
        manager = by_name[name]
        if not operation.available(manager):
            raise ApiProblem(
                501,
                "operation-not-implemented",
                f"operation {operation.name!r} is not available in this version of rule_engine",
                operation=operation.name,
            )
        return operation.run(manager, body if body is not None else OperationBody(), actor)

    app.add_api_route(
        f"/api/v1/{operation.name}",
        endpoint,
        methods=["POST"],
        tags=["writes"],
        summary=operation.summary,
        name=operation.name,
        response_model=None,
        responses={501: {"description": "the operation does not exist in this version (problem+json)"}},
    )
