"""The HTTP API (FastAPI): `create_app` builds it around a loaded run and an event store; `serve` runs
it under uvicorn. Routes are versioned under /v1/; /health, /ready and /metrics are not.

Every error a client can cause is a 422 whose `detail` names the field (`loc`), in FastAPI's own
shape; an unknown user is answered by the fallback model and flagged, never an error.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from recstack.abilities import UserCoverage
from recstack.data.interactions import UnknownIdError
from recstack.errors import RecstackError
from recstack.serve import ann
from recstack.serve import schemas as s
from recstack.serve.events import DEFAULT_EVENTS_FILE, Event, EventStore
from recstack.serve.metrics import CONTENT_TYPE_LATEST, MULTIPROCESS_DIR, ServeMetrics
from recstack.serve.page import add_page
from recstack.serve.ranking import REASON_HISTORY, reasons, recommend_one
from recstack.serve.state import Server, ServedRun, load_served, peak_memory_mb

log = logging.getLogger("recstack.serve")

MAX_BODY_BYTES = 1 << 20  # a larger request body is refused (422) before it is parsed
API = "/v1"


def invalid(loc: tuple[Any, ...], message: str) -> HTTPException:
    """A 422 in FastAPI's validation shape, naming the field at `loc`."""
    return HTTPException(422, detail=[{"type": "value_error", "loc": list(loc), "msg": message}])


class CountRequests:
    """Prometheus request counts and latencies per route template, as plain ASGI middleware: Starlette's
    `@app.middleware("http")` (BaseHTTPMiddleware) wraps every response in a stream and a task, which
    cost more per request than the empty endpoint itself (issue 14's profile)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tick, status = time.perf_counter(), [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # the route template (set by the router on the shared scope): no per-id label explosion
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(path, scope["method"]).observe(time.perf_counter() - tick)


class FollowStore:
    """Before each request, catch up with the events and reloads other worker processes committed to
    the shared event store (`Server.refresh`: one read of a shared counter when nothing changed)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.server.refresh()
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a request body over `limit` bytes with a 422 naming the body (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send, int(declared))
        chunks, size = [], 0
        while True:  # read the body first: a streamed body without a length is measured too
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send, size)
            chunks.append(message)
            if not message.get("more_body"):
                break

        async def replay() -> dict:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, size: int) -> None:
        detail = [{"type": "too_large", "loc": ["body"],
                   "msg": f"the request body ({size:,} bytes or more) exceeds the limit of {self.limit:,} bytes"}]
        await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)


def create_app(run: str | Path | ServedRun | Server, *, labels: list[str] | None = None,
               events: str | Path | None = None, admin_token: str | None = None, trust: bool = False,
               max_body_bytes: int = MAX_BODY_BYTES, ann_min_items: int = ann.ANN_MIN_ITEMS) -> FastAPI:
    """The API around a run directory (or a loaded `ServedRun` / `Server`). Posted events go to the
    SQLite file `events` (default: events.sqlite next to the run directory). Admin routes need
    `admin_token` (as `Authorization: Bearer <token>`) and are off without one. Dot-product models
    over at least `ann_min_items` items retrieve known users' candidates with an HNSW index."""
    if isinstance(run, Server):
        server = run
    else:
        served = run if isinstance(run, ServedRun) else load_served(run, labels, trust=trust,
                                                                     ann_min_items=ann_min_items)
        store = EventStore(Path(events) if events is not None else served.run_dir.parent / DEFAULT_EVENTS_FILE)
        server = Server(served, store, trust=trust, ann_min_items=ann_min_items)
    metrics = ServeMetrics()
    metrics.serving(server.current)
    server.on_swap.append(metrics.serving)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.store.close()

    app = FastAPI(title="recstack", version="1", lifespan=lifespan, redoc_url=None,
                  description="Recommendations, similar items, live events and hot reload from a recstack run "
                              "directory.")
    app.state.server, app.state.metrics = server, metrics

    fast_paths: dict[str, tuple[type, Any, Any]] = {}  # filled once the routes exist (end of create_app)
    app.add_middleware(FastPath, server=server, paths=fast_paths)  # added first: the innermost of these
    app.add_middleware(FollowStore, server=server)
    app.add_middleware(CountRequests, metrics=metrics)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RecstackError)
    async def user_error(request: Request, exc: RecstackError) -> JSONResponse:
        return JSONResponse({"detail": [{"type": "value_error", "loc": ["body"], "msg": str(exc)}]}, status_code=422)

    def admin(request: Request) -> None:
        if not admin_token:
            raise HTTPException(403, detail="admin routes are off: start the server with --admin-token "
                                            "(or $RECSTACK_ADMIN_TOKEN)")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, detail="admin routes need 'Authorization: Bearer <token>' with the server's "
                                            "admin token", headers={"WWW-Authenticate": "Bearer"})

    # ---- health ---------------------------------------------------------------------------------
    @app.get("/health", response_model=s.Status, tags=["health"])
    async def health() -> s.Status:
        """The process answers."""
        return s.Status(status="ok")

    @app.get("/ready", response_model=s.Status, tags=["health"], responses={503: {"model": s.Status}})
    def ready() -> Any:
        """A run is loaded and answers requests."""
        current = server.current
        if current is None or not current.models:
            return JSONResponse({"status": "loading"}, status_code=503)
        return s.Status(status="ready", run=current.name)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format: requests, latencies, fallbacks, events, served model versions."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---- models and look-ups --------------------------------------------------------------------
    @app.get(f"{API}/models", response_model=s.ModelList, tags=["models"])
    def list_models() -> s.ModelList:
        run = server.current
        return s.ModelList(run=run.name, fallback=run.fallback_name, models=[
            s.ModelInfo(label=label, name=run.model_names[label], version=run.versions[label],
                        default=label == run.default_label, scores_new_users=_scores_new_users(run, model))
            for label, model in run.models.items()])

    @app.get(f"{API}/items", response_model=list[s.Item], tags=["items"])
    def search_items(q: str = Query("", max_length=200, description="part of a title or an item id"),
                     limit: int = Query(20, ge=1, le=s.MAX_K)) -> list[s.Item]:
        """Items whose title (or id) contains `q`, most popular first."""
        run = server.current
        needle = q.strip().lower()
        counts = run.popularity()
        titles = run.columns.get("title")
        if needle:
            texts = np.char.lower((titles if titles is not None else run.base.items.ids).astype(str))
            ids = np.char.lower(run.base.items.ids.astype(str))
            found = np.flatnonzero((np.char.find(texts, needle) >= 0) | (ids == needle))
        else:
            found = np.arange(run.n_items)
        found = found[np.argsort(-counts[found], kind="stable")][:limit]
        return [s.Item(**run.item_record(i)) for i in found]

    @app.get(f"{API}/items/popular", response_model=list[s.Item], tags=["items"])
    def popular_items(k: int = Query(10, ge=1, le=s.MAX_K), genre: list[str] = Query([]),
                      year_min: Optional[int] = Query(None, ge=0, le=9999),
                      year_max: Optional[int] = Query(None, ge=0, le=9999)) -> list[s.Item]:
        """The most interacted-with items, posted events included, optionally filtered."""
        run = server.current
        counts = run.popularity()
        allowed = _allowed(run, genre, year_min, year_max, None, ("query",))
        order = np.argsort(-counts, kind="stable")
        if allowed is not None:
            order = order[allowed[order]]
        return [s.Item(**run.item_record(i)) for i in order[:k]]

    @app.get(f"{API}/items/{{item_id}}", response_model=s.Item, tags=["items"], responses={404: {}})
    def item(item_id: str) -> s.Item:
        run = server.current
        return s.Item(**run.item_record(_known_item(run, item_id)))

    @app.get(f"{API}/items/{{item_id}}/similar", response_model=s.SimilarItems, tags=["items"],
             responses={404: {}})
    def similar_items(item_id: str, k: int = Query(10, ge=1, le=s.MAX_K)) -> s.SimilarItems:
        """Items whose users overlap most with this item's (cosine over the run's events)."""
        run = server.current
        idx = _known_item(run, item_id)
        sim = run.similar_items(np.array([idx]))[0]
        sim[idx] = -np.inf
        order = np.argsort(-sim, kind="stable")
        order = order[sim[order] > 0][:k]
        return s.SimilarItems(run=run.name, item=s.Item(**run.item_record(idx)), items=[
            s.RankedItem(**run.item_record(i), rank=r, score=float(sim[i])) for r, i in enumerate(order, 1)])

    @app.get(f"{API}/users/{{user_id}}", response_model=s.UserInfo, tags=["users"], responses={404: {}})
    def user(user_id: str, recent: int = Query(10, ge=0, le=s.MAX_K)) -> s.UserInfo:
        run = server.current
        user_idx, history, known, new = run.user_history(user_id)
        if not known and not new:
            raise HTTPException(404, detail=f"unknown user {user_id!r}: no events in run {run.name!r} and none posted")
        own = run.events_of(history, user_idx)
        return s.UserInfo(user_id=user_id, known_user=known, history_length=len(own), new_events=new,
                          recent=[s.Item(**run.item_record(i)) for i in run.recent_items(own, recent)])

    # ---- recommendations ------------------------------------------------------------------------
    def respond(run: ServedRun, request: s.UserRequest | s.HistoryRequest, user: int, history: Any,
                known: bool, user_id: Any, loc: tuple[str, ...]) -> dict[str, Any]:
        label = request.model or run.default_label
        if label not in run.models:
            raise invalid((*loc, "model"), f"unknown model {label!r}; served: {', '.join(run.models)}")
        if request.k > run.n_items:
            raise invalid((*loc, "k"), f"k={request.k} is larger than the catalogue ({run.n_items} items)")
        exclude = _item_indices(run, request.exclude, (*loc, "exclude"))
        f = request.filters
        allowed = _allowed(run, f.genres, f.year_min, f.year_max, exclude, (*loc, "filters"))
        own = run.events_of(history, user)
        cold_reason = ("unknown user: no history" if not known and len(own) == 0
                       else f"history of {len(own)} events, fewer than the run's cold_users.min_history "
                            f"({run.min_history})")
        ranked = recommend_one(run.models[label], run.fallback, run.fallback_name, label, user, history, request.k,
                               min_history=run.min_history, mask_history=not request.include_seen,
                               allowed=allowed, cold_reason=cold_reason)
        if ranked.fallback:
            metrics.fallbacks.labels(label).inc()
        because: list[Any] = [None] * len(ranked.items)
        if request.explain and len(own) and len(ranked.items):
            liked = np.unique(own[-REASON_HISTORY:])
            because = reasons(run.similar_items(liked, ranked.items), liked)
        # plain dicts in the shape of s.Recommendations (tests/serve check every answer against the
        # OpenAPI schema): building and re-validating pydantic models per item was a fifth of a request
        items = []
        for position, (idx, score, why) in enumerate(zip(ranked.items, ranked.scores, because), start=1):
            reason = None
            if why is not None:
                record = run.item_record(why[0])
                reason = {"item_id": record["item_id"], "title": record["title"], "similarity": why[1]}
            items.append({**run.item_record(idx), "rank": position, "score": _finite(score), "because": reason})
        return {"run": run.name, "model": label, "model_version": run.versions[label], "user_id": user_id,
                "k": request.k, "history_length": len(own), "known_user": known, "fallback": ranked.fallback,
                "fallback_model": run.fallback_name if ranked.fallback else None, "fallback_reason": ranked.reason,
                "retrieval": ranked.retrieval, "items": items}

    async def answer(run: ServedRun, label: str | None, work: Any) -> Response:
        """`work()`'s recommendations as JSON: on the event loop for a model whose warm-up ranking was
        fast (`ServedRun.inline`), else in the thread pool. Serialised here: FastAPI would validate
        a returned value against `response_model` again (issue 14's profile)."""
        inline = run.inline.get(label or run.default_label, False)
        result = work() if inline else await run_in_threadpool(work)
        return Response(orjson.dumps(result), media_type="application/json")

    def for_user(run: ServedRun, request: s.UserRequest) -> dict[str, Any]:
        user_idx, history, known, new = run.user_history(request.user_id)
        return respond(run, request, user_idx, history, known or new > 0, request.user_id, ("body",))

    def for_history(run: ServedRun, request: s.HistoryRequest) -> dict[str, Any]:
        items = _item_indices(run, request.items, ("body", "items"))
        user_idx, history = run.adhoc_history(items)
        return respond(run, request, user_idx, history, False, None, ("body",))

    @app.post(f"{API}/recommend", response_model=s.Recommendations, tags=["recommend"],
              openapi_extra=_json_body(s.UserRequest))
    async def recommend_user(raw: Request) -> Response:
        """Top-k for a user of the run or one who posted events (seen items excluded unless
        include_seen); an unknown user gets the fallback model's list, flagged."""
        request = await _parse(raw, s.UserRequest)
        run = server.current
        return await answer(run, request.model, lambda: for_user(run, request))

    @app.get(f"{API}/users/{{user_id}}/recommendations", response_model=s.Recommendations, tags=["recommend"])
    async def recommend_user_get(user_id: str, model: Optional[str] = Query(None, min_length=1, max_length=200),
                                 k: int = Query(10, ge=1, le=s.MAX_K), include_seen: bool = False,
                                 genre: list[str] = Query([]), year_min: Optional[int] = Query(None, ge=0, le=9999),
                                 year_max: Optional[int] = Query(None, ge=0, le=9999),
                                 exclude: list[str] = Query([], max_length=s.MAX_ITEMS), explain: bool = True
                                 ) -> Response:
        """The same as POST /v1/recommend, for a quick look with curl."""
        request = s.UserRequest.model_construct(
            user_id=user_id, model=model, k=k, include_seen=include_seen, explain=explain, exclude=exclude,
            filters=s.Filters.model_construct(genres=genre, year_min=year_min, year_max=year_max))
        run = server.current

        def work() -> dict[str, Any]:
            user_idx, history, known, new = run.user_history(user_id)
            return respond(run, request, user_idx, history, known or new > 0, user_id, ("query",))
        return await answer(run, model, work)

    @app.post(f"{API}/recommend/history", response_model=s.Recommendations, tags=["recommend"],
              openapi_extra=_json_body(s.HistoryRequest))
    async def recommend_history(raw: Request) -> Response:
        """Top-k for an anonymous user from the items sent (oldest first): models that can score a
        history do; the others are answered by the fallback, flagged with the reason."""
        request = await _parse(raw, s.HistoryRequest)
        run = server.current
        return await answer(run, request.model, lambda: for_history(run, request))

    # ---- events ---------------------------------------------------------------------------------
    @app.post(f"{API}/events", response_model=s.EventsAccepted, tags=["events"])
    def post_events(batch: s.EventBatch) -> s.EventsAccepted:
        """Store interactions durably (acknowledged = on disk), idempotent by event_id; the next
        recommendation for the user sees them. One unknown item refuses the whole batch (nothing
        is written)."""
        now = int(time.time())
        events = [Event(e.event_id, str(e.user_id), str(e.item_id), e.type,
                        now if e.timestamp is None else e.timestamp, e.value) for e in batch.events]

        def check(run: ServedRun, _: list[Event]) -> None:
            for position, e in enumerate(batch.events):
                _item_index(run, e.item_id, ("body", "events", position, "item_id"))

        accepted, duplicates = server.ingest(events, check)
        metrics.events.labels("accepted").inc(accepted)
        metrics.events.labels("duplicate").inc(duplicates)
        return s.EventsAccepted(accepted=accepted, duplicates=duplicates)

    # ---- admin ----------------------------------------------------------------------------------
    @app.post(f"{API}/admin/reload", response_model=s.ReloadDone, tags=["admin"], dependencies=[Depends(admin)],
              responses={401: {}, 403: {}})
    def reload(request: s.ReloadRequest) -> s.ReloadDone:
        """Load another run directory and switch to it atomically; a run that fails to load is refused
        (422) and the current one keeps serving."""
        old = server.current.name
        try:
            served = server.reload(request.run_dir, request.models)
        except Exception as exc:  # noqa: BLE001  whatever breaks, the running run must stay
            message = str(exc) if isinstance(exc, RecstackError) else f"{type(exc).__name__}: {exc}"
            log.warning("reload of %s refused: %s", request.run_dir, message)
            raise invalid(("body", "run_dir"), f"refused, still serving run {old!r}: {message}") from None
        log.info("reloaded in %.2f s; peak memory %.0f MB", served.load_seconds, peak_memory_mb())
        return s.ReloadDone(run=served.name, models=list(served.models), seconds=served.load_seconds)

    @app.get(f"{API}/admin/events/export", tags=["admin"], dependencies=[Depends(admin)],
             response_class=Response, responses={401: {}, 403: {}})
    def export_events(format: str = Query("parquet", pattern="^(parquet|csv)$"),
                      include_run: bool = Query(True, description="the run's own events first, then the posted "
                                                                  "ones: a table `recstack run` trains on")
                      ) -> Response:
        """The event log as a table (user_id, item_id, rating, timestamp, type, event_id)."""
        from recstack.serve.export import event_table, write_table

        table = event_table(server.current, list(server.store.since(0)), include_run=include_run)
        body = write_table(table, format)
        media = "text/csv" if format == "csv" else "application/vnd.apache.parquet"
        return Response(body, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="events.{format}"'})

    add_page(app)
    _document_bodies(app, (s.UserRequest, s.HistoryRequest))
    routes = {route.path: route for route in app.routes if getattr(route, "methods", None) == {"POST"}}
    fast_paths.update({f"{API}/recommend": (s.UserRequest, for_user, routes[f"{API}/recommend"]),
                       f"{API}/recommend/history": (s.HistoryRequest, for_history, routes[f"{API}/recommend/history"])})
    return app


class FastPath:
    """The two recommend routes' successful answers in plain ASGI: Starlette's routing and FastAPI's
    request handling were about a third of such a request (issue 14's profile). The body is parsed
    and answered by the same functions the routes call. Anything else (a body that does not
    validate, an HTTP error such as an unknown model, a model answered in the thread pool because
    its warm-up was slow) goes on to the FastAPI route, which answers in its usual shape; the
    OpenAPI schema documents those routes. It sits inside the body limit, the metrics and
    FollowStore, so they see every request."""

    def __init__(self, app: Any, server: Server, paths: dict[str, tuple[type, Any, Any]]) -> None:
        self.app, self.server, self.paths = app, server, paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        handler = self.paths.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            return await self.app(scope, receive, send)
        model, answer, route = handler
        messages, body = [], b""
        while True:  # the body limit has read it already: these are its buffered messages
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = model.model_validate_json(body)
            run = self.server.current
            if not run.inline.get(request.model or run.default_label, False):
                raise LookupError("not answered on the event loop")
            payload = orjson.dumps(answer(run, request))
        except Exception:  # noqa: BLE001  the FastAPI route answers it, error or not, the way it always does
            async def replay() -> dict:
                return messages.pop(0) if messages else await receive()
            return await self.app(scope, replay, send)
        scope["route"] = route  # the metrics label it by route, as for a routed request
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


# The two recommend routes parse their body with pydantic's own JSON parser (`_parse`) instead of a
# FastAPI body parameter: FastAPI's parsing (json.loads, then validation of the Python objects, with
# its dependency machinery) was about a sixth of a request (issue 14's profile). The OpenAPI schema
# still documents the bodies (`_json_body`, `_document_bodies`) and errors keep FastAPI's 422 shape.

def _json_body(model: type) -> dict[str, Any]:
    """The operation's body and its 422, as FastAPI documents a body parameter."""
    return {"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {"422": {"description": "Validation Error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}}}


async def _parse(raw: Request, model: type) -> Any:
    """The request body as `model`; a 422 naming the field (loc starts with "body") otherwise."""
    try:
        return model.model_validate_json(await raw.body())
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None


def _document_bodies(app: FastAPI, models: tuple[type, ...]) -> None:
    """Add `models` (and the models they use) to the OpenAPI components that `_json_body` refers to."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            _, defs = models_json_schema([(model, "validation") for model in models],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema

    app.openapi = openapi


def _scores_new_users(run: ServedRun, model: Any) -> bool | None:
    """Whether `model` declares it can score a user outside the run from a one-item history (None: it
    does not declare which users it can score)."""
    if not isinstance(model, UserCoverage):
        return None
    user, history = run.adhoc_history(np.zeros(1, dtype=np.int64))
    try:
        return bool(np.asarray(model.can_score(np.array([user]), history))[0])
    except Exception:  # noqa: BLE001  a model saved before it kept what the answer needs
        return None


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _item_index(run: ServedRun, item_id: Any, loc: tuple[Any, ...]) -> int:
    try:
        return run.item_index(item_id)
    except UnknownIdError as exc:
        raise invalid(loc, str(exc)) from None


def _item_indices(run: ServedRun, ids: list[Any], loc: tuple[Any, ...]) -> np.ndarray:
    return np.array([_item_index(run, item_id, (*loc, i)) for i, item_id in enumerate(ids)], dtype=np.int64)


def _known_item(run: ServedRun, item_id: str) -> int:
    try:
        return run.item_index(item_id)
    except UnknownIdError as exc:
        raise HTTPException(404, detail=str(exc)) from None


def _allowed(run: ServedRun, genres: list[str], year_min: int | None, year_max: int | None,
             exclude: np.ndarray | None, loc: tuple[Any, ...]) -> np.ndarray | None:
    try:
        return run.allowed_items(genres, year_min, year_max, exclude)
    except RecstackError as exc:
        raise invalid(loc, str(exc)) from None


WORKER_SETTINGS = "RECSTACK_SERVE_SETTINGS"  # create_app's arguments, as JSON, for each worker process


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)` (a uvicorn factory): it loads the run itself
    and shares the event store with the other workers."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    app = create_app(settings.pop("run_dir"), **settings)
    log.info("worker %d ready; peak memory %.0f MB", os.getpid(), peak_memory_mb())
    return app


def serve(run_dir: str | Path, *, labels: list[str] | None = None, host: str = "127.0.0.1", port: int = 8000,
          events: str | Path | None = None, admin_token: str | None = None, trust: bool = False,
          log_level: str = "info", ann_min_items: int = ann.ANN_MIN_ITEMS, workers: int = 1) -> None:
    """Load the run and answer HTTP requests under uvicorn until stopped. With `workers` > 1, uvicorn
    starts that many processes on one socket, each with its own copy of the models (memory x workers);
    they share the event store, so each sees the others' events and reloads at its next request,
    and their Prometheus metrics are summed (prometheus_client's multiprocess mode)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if workers < 1:
        raise RecstackError(f"workers must be at least 1, got {workers}")
    if workers > 1:
        settings = {"run_dir": str(run_dir), "labels": labels, "events": None if events is None else str(events),
                    "admin_token": admin_token, "trust": trust, "ann_min_items": ann_min_items}
        # fail here, once, with the real error, rather than in every worker
        load_served(run_dir, labels, trust=trust, ann_min_items=ann_min_items)
        os.environ[WORKER_SETTINGS] = json.dumps(settings)
        with tempfile.TemporaryDirectory(prefix="recstack-metrics-") as metrics_dir:
            os.environ[MULTIPROCESS_DIR] = metrics_dir
            log.info("starting %d worker processes", workers)
            uvicorn.run("recstack.serve.app:worker_app", factory=True, workers=workers, host=host, port=port,
                        log_level=log_level)
        return
    tick = time.perf_counter()
    app = create_app(run_dir, labels=labels, events=events, admin_token=admin_token, trust=trust,
                     ann_min_items=ann_min_items)
    server = app.state.server
    log.info("start-up %.2f s; peak memory %.0f MB; %d posted events in %s; admin routes %s",
             time.perf_counter() - tick, peak_memory_mb(), server.store.count(), server.store.path,
             "on" if admin_token else "off")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
