"""The dashboard: the server's health, trends, incidents, decisions, events and apps in a browser.

Pages on the control plane behind the approvals page's token login (`web/approvals.py`: the same
session cookie, a CSRF token on every form, the same security headers). Their CSP adds
`script-src 'self'` and `connect-src 'self'` for one static script that follows the event log;
every page reads whole without it. `read` sees everything, `operate` answers halts and rolls apps
back, `admin` sets the autonomy level.

- `GET /`: every check's newest result, the last beat, autonomy (and who set it), pause, open
  incidents by severity, pending halts with their options, recent decisions, and how far the
  event chain is verified.
- `GET /trends/{check}`: one chart per target and metric over 1 h, 24 h or 7 d, as inline SVG drawn
  here (no script, no CDN), the thresholds as lines, and for a disk when it will be full. SQLite
  averages each series into at most MAX_POINTS buckets, so the page is as small for 7 days as for
  1 hour (reading a week of results still costs what they are: bench/dashboard.py).
- `GET /incidents/{id}`: the incident's timeline from its events: seen, decided (planner, rule,
  verdict, reason, policy version; for the LLM the model, tokens, cost and tool calls), asked,
  answered (who, via what), acted, verified.
- `GET /events` (filters, pages of PAGE events, the chain's state), `GET /events/{id}`,
  `GET /events.jsonl` (the same lines as `fazt-agent events export`).
- `GET /apps`: releases with a rollback button, and each app's recent log lines.
- `GET /live`: server-sent events fed from the event log: woken by the in-process event log as an
  event commits, and looking every second for events another process (the CLI, the MCP worker)
  wrote (`_live.py`). `static/dashboard.js` updates the overview's check rows from them and
  reloads the sections an event changed.

The chain is verified incrementally (`_chain.py`): the first page walks it from its anchor, later pages
only the events written since, and "verify again" (a button) walks it whole.

Every refused form is recorded: a halt answer as `halt.answer_refused` (channel web, through the
approvals page's path), anything else as `web.refused`. Nothing here is imported until the daemon
starts its control plane, and jinja2 not until the first page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..clock import iso, parse_iso
from ..config import LEVELS
from ..events import Event
from ..halt.store import HaltError
from ..units import format_duration, format_metric, format_size, parse_duration
from ._chain import Chain
from ._charts import MAX_POINTS, chart, metric_label, primary_metric, sort_metrics, thresholds
from ._live import Live, sse
from ._timeline import stamp, summary, timeline_entry
from .approvals import CSP, SECURITY_HEADERS, Approvals, Session, number, outcome, when

if TYPE_CHECKING:
    from ..engine import Engine
    from ..pulse.base import Check, CheckResult

log = logging.getLogger(__name__)

# the approvals page's headers, with this page's one script and its event stream
HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": f"{CSP}; script-src 'self'; connect-src 'self'"}
RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
DEFAULT_RANGE = "24h"
PAGE = 50                 # events per page
RECENT_DECISIONS = 10
TIMELINE_LIMIT = 1000     # events of one incident shown
TYPE_GLOB = re.compile(r"^[A-Za-z0-9_.*?\[\]!^-]{1,100}$")

# events after which the overview's sections (incidents, halts, decisions, autonomy) are reloaded
CHANGES = ("incident.", "halt.", "decision.", "action.", "autonomy.", "agent.paused", "agent.resumed", "app.")


class Dashboard:
    """The pages; `routes()` goes into `web.app.create_app(dashboard=...)`. `pages` is the approvals
    page, whose login, sessions, CSRF tokens and answer path these pages share."""

    def __init__(self, pages: Approvals, engine: Engine):
        self.pages = pages
        self.engine = engine
        self.rt = engine.rt
        self.answers = pages.answers
        self.chain = Chain(self.rt.store, self.rt.clock)
        self.live_streams = Live(self.rt.events)
        self._env: Any = None
        self._static: dict[str, bytes] = {}

    def routes(self) -> list[Route]:
        return [Route("/", self.overview, methods=["GET"]),
                Route("/answer", self.answer, methods=["POST"]),
                Route("/autonomy", self.autonomy, methods=["POST"]),
                Route("/pause", self.pause, methods=["POST"]),
                Route("/trends", self.trends_index, methods=["GET"]),
                Route("/trends/{check}", self.trends, methods=["GET"]),
                Route("/incidents", self.incidents, methods=["GET"]),
                Route("/incidents/{id}", self.incident, methods=["GET"]),
                Route("/events", self.events, methods=["GET"]),
                Route("/events.jsonl", self.export, methods=["GET"]),
                Route("/events/verify", self.verify, methods=["POST"]),
                Route("/events/{id}", self.event, methods=["GET"]),
                Route("/apps", self.apps, methods=["GET"]),
                Route("/apps/{name}/rollback", self.rollback, methods=["POST"]),
                Route("/live", self.live, methods=["GET"]),
                Route("/static/dashboard.css", self.static, methods=["GET"]),
                Route("/static/dashboard.js", self.static, methods=["GET"])]

    def close(self) -> None:
        """End the open /live streams (the daemon is stopping: the server waits for them)."""
        self.live_streams.close()

    # -- the overview ------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        session, root = await self.pages._session(request), root_of(request)
        if session is None:
            return to_login(request)
        rt = self.rt
        open_incidents = await self.engine.incidents.list(status="open", limit=500)
        by_severity: dict[str, int] = {}
        for i in open_incidents:
            by_severity[i.severity] = by_severity.get(i.severity, 0) + 1
        decisions = await rt.events.list(type_glob="decision.*", limit=RECENT_DECISIONS)
        return self._page("dashboard/overview.html", request, session, {
            "checks": await self.check_rows(), "beat": await self.last_beat(),
            "autonomy": await rt.autonomy_state(), "pause": await rt.pause_state(),
            "incidents": open_incidents,
            "severities": sorted(by_severity.items(), key=lambda kv: -severity_rank(kv[0])),
            "pending": list(reversed(await self.engine.executor.halts.list("pending"))),
            "decisions": decisions, "chain": await self.chain.state(), "last_event": await rt.events.last_id(),
            "levels": LEVELS})

    async def check_rows(self) -> list[dict[str, Any]]:
        """Every configured check's newest result per target (a check with none yet: one row saying
        so), as the overview's rows and the live updates show them."""
        checks = {c.name: c for c in self.rt.pulse.checks}
        rows, seen = [], set()
        now = self.rt.clock.now()
        for ts, r in await self.rt.beats.latest():
            if r.check in checks:
                seen.add(r.check)
                rows.append(check_row(r, ts, now))
        for name, c in checks.items():
            if name not in seen:
                rows.append({"key": f"{name}|{c.target}", "check": name, "target": c.target, "status": "unknown",
                             "value": "", "message": "no result yet", "measured": "never"})
        return sorted(rows, key=lambda r: (r["check"], r["target"]))

    async def last_beat(self) -> dict[str, Any] | None:
        beat = await self.rt.beats.last_beat()
        if beat is None:
            return None
        at = parse_iso(beat["ts"])
        return {"id": beat["id"], "status": beat["status"], "when": f"{when(at)} ({self._ago(at)})",
                "duration": format_duration(beat["duration_ms"] / 1000)}

    # -- forms: answer a halt, set the autonomy, pause ------------------------------------------------

    async def answer(self, request: Request) -> Response:
        """Answer a pending halt from the overview (operate), through the one answer path."""
        session, form = await self.pages._session(request), await self.pages._form(request)
        option, halt_id = form.get("option", ""), number(form.get("halt_id", ""))
        refused = self._guard(session, form, "operate")
        if refused is None and (halt_id is None or not option):
            refused = ("the form names no halt or no option", 400)
        back = ("", "Back to the overview")
        if refused is not None:
            await self.pages._refuse(halt_id, option or "?", "web", session.name if session else "unknown",
                                     refused[0])
            return self._refused(request, session, refused, back=back)
        assert session is not None and halt_id is not None
        try:
            result = await self.answers.answer(halt_id, option, channel="web", identity=session.name)
        except HaltError as e:   # recorded by the answer path
            return self._message(request, session, "Refused", str(e), "refused", status=409, back=back,
                                 halt=await self.engine.executor.halts.get(halt_id))
        except Exception:   # the daemon never breaks on one request
            log.exception("answering halt #%d from the dashboard failed", halt_id)
            return self._message(request, session, "Error", "the answer could not be completed; see the agent's log",
                                 "refused", status=500, back=back)
        good, text = outcome(option, result)
        return self._message(request, session, f"Answered: {option}", text, "ok" if good else "refused", back=back,
                             halt=await self.engine.executor.halts.get(halt_id))

    async def autonomy(self, request: Request) -> Response:
        """Set the autonomy level (admin), as `fazt-agent autonomy LEVEL` does; by `web:TOKEN`."""
        root = root_of(request)
        session, form = await self.pages._session(request), await self.pages._form(request)
        level = form.get("level", "")
        refused = self._guard(session, form, "admin")
        if refused is None and level not in LEVELS:
            refused = (f"{level[:20]!r} is not an autonomy level (accepted: {', '.join(LEVELS)})", 400)
        if refused is not None:
            await self._record_refusal(request, session, f"autonomy {level[:20]}", refused[0])
            return self._refused(request, session, refused, back=("", "Back to the overview"))
        assert session is not None
        await self.engine.set_autonomy(level, by=f"web:{session.name}")
        return RedirectResponse(f"{root}#autonomy", status_code=303, headers=HEADERS)

    async def pause(self, request: Request) -> Response:
        """Pause or resume the agent (admin), as `fazt-agent pause` / `resume` do; by `web:TOKEN`."""
        root = root_of(request)
        session, form = await self.pages._session(request), await self.pages._form(request)
        want = form.get("paused", "")
        refused = self._guard(session, form, "admin")
        if refused is None and want not in ("1", "0"):
            refused = ("the form says neither pause nor resume", 400)
        if refused is not None:
            await self._record_refusal(request, session, "resume" if want == "0" else "pause", refused[0])
            return self._refused(request, session, refused, back=("", "Back to the overview"))
        assert session is not None
        await self.engine.set_paused(want == "1", by=f"web:{session.name}")
        return RedirectResponse(f"{root}#agent", status_code=303, headers=HEADERS)

    def _guard(self, session: Session | None, form: dict[str, str], scope: str) -> tuple[str, int] | None:
        """Why a form may not act (reason, HTTP status), or None: a session, its CSRF token, its scope."""
        from ..mcp.auth import covers

        if session is None:
            return "no session (log in first)", 403
        if not self.pages._csrf_ok(session, form):
            return "the form's CSRF token is missing or wrong; nothing was done (reload the page)", 403
        if not covers(session.scope, scope):
            return f"token {session.name!r} has the {session.scope!r} scope; this needs {scope!r}", 403
        return None

    async def _record_refusal(self, request: Request, session: Session | None, action: str, reason: str) -> None:
        from ..event_types import WebRefused

        client = request.client
        try:
            await self.rt.events.emit("web.refused", WebRefused(
                action=action, reason=reason, by=session.name if session else None,
                peer=f"{client.host}:{client.port}" if client else None), source="web")
        except Exception:   # recording the refusal must not turn it into a 500
            log.exception("could not record web.refused")

    def _refused(self, request: Request, session: Session | None, refused: tuple[str, int],
                 back: tuple[str, str]) -> Response:
        if session is None:
            back = ("login", "Log in")
        return self._message(request, session, "Refused", refused[0], "refused", status=refused[1], back=back)

    # -- trends --------------------------------------------------------------------------------

    async def trends_index(self, request: Request) -> Response:
        session = await self.pages._session(request)
        if session is None:
            return to_login(request)
        return self._page("dashboard/trends_index.html", request, session, {"checks": await self.check_rows()})

    async def trends(self, request: Request) -> Response:
        """Charts of one check: per target and metric, over the chosen range, thresholds drawn."""
        session, root = await self.pages._session(request), root_of(request)
        if session is None:
            return to_login(request)
        name = request.path_params["check"]
        check = next((c for c in self.rt.pulse.checks if c.name == name), None)
        targets = await self.rt.beats.targets(name)
        wanted = request.query_params.get("target")
        if wanted is not None and wanted in targets:
            targets = [wanted]
        if check is None and not targets:
            return self._message(request, session, "Not found", f"there is no check named {name[:64]!r}",
                                 "refused", status=404, back=("trends", "All checks"))
        now = self.rt.clock.now()
        span = request.query_params.get("range", "")
        if span not in RANGES:
            span = await self._default_range(name, targets, now)
        start = now - timedelta(seconds=RANGES[span])
        sections = []
        for target in targets:
            last = await self.rt.beats.last_result(name, target)
            series = await self.downsampled(name, target, start, now)
            charts = [chart(f"c{len(sections)}-{n}", metric, points, thresholds(check, metric), start, now,
                            f"{name}{'[' + target + ']' if target else ''} {metric}",
                            last[1].metrics.get(metric) if last else None)
                      for n, (metric, points) in enumerate(sort_metrics(check, series))]
            sections.append({"target": target, "last": last[1] if last else None,
                             "measured": f"{when(last[0])} ({self._ago(last[0])})" if last else "never",
                             "charts": charts, "full": await self.full_in(check, target, last)})
        return self._page("dashboard/trends.html", request, session, {
            "name": name, "check": check, "sections": sections, "span": span, "ranges": list(RANGES),
            "start": when(start), "end": when(now)})

    async def _default_range(self, check: str, targets: list[str], now: datetime) -> str:
        """DEFAULT_RANGE, or the shortest range holding all of a young check's history (a chart of
        24 h whose data is the last 10 minutes is a blank)."""
        oldest = None
        for target in targets:   # one index seek each
            ts = await self.rt.store.scalar(
                "SELECT MIN(ts) FROM results WHERE check_name = ? AND target = ?", (check, target))
            if ts is not None and (oldest is None or ts < oldest):
                oldest = ts
        if oldest is None:
            return DEFAULT_RANGE
        age = (now - parse_iso(oldest)).total_seconds()
        return next((r for r, seconds in RANGES.items() if age <= seconds and seconds <= RANGES[DEFAULT_RANGE]),
                    DEFAULT_RANGE)

    async def downsampled(self, check: str, target: str, start: datetime,
                          end: datetime) -> dict[str, list[tuple[float, float, float, float]]]:
        """Each numeric metric of one check target between `start` and `end`, averaged by SQLite into
        at most MAX_POINTS buckets: metric -> [(the bucket's mean time as epoch seconds, mean, min,
        max)].

        One pass over the range of the (check, target, ts) index; each result's time and bucket are
        computed once (the materialized CTE), not once per metric. Its cost is parsing each stored
        result's metrics: about 7 ms per 1,000 results of a check with 10 metrics."""
        step = max((end - start).total_seconds() / MAX_POINTS, 1.0)
        rows = await self.rt.store.fetchall(
            "WITH r AS MATERIALIZED ("
            " SELECT s, MIN(CAST(s / ?2 AS INTEGER), ?6) AS b, metrics FROM ("
            "  SELECT (julianday(ts) - julianday(?1)) * 86400.0 AS s, metrics FROM results"
            "  WHERE check_name = ?3 AND target = ?4 AND ts >= ?1 AND ts <= ?5))"
            " SELECT AVG(r.s) AS t, j.key AS metric, AVG(j.value) AS mean, MIN(j.value) AS lo, MAX(j.value) AS hi"
            " FROM r, json_each(r.metrics) AS j WHERE j.type IN ('integer', 'real')"
            " GROUP BY j.key, r.b ORDER BY j.key, r.b",
            (iso(start), step, check, target, iso(end), MAX_POINTS - 1))
        base = start.timestamp()
        out: dict[str, list[tuple[float, float, float, float]]] = {}
        for r in rows:
            out.setdefault(r["metric"], []).append((base + r["t"], r["mean"], r["lo"], r["hi"]))
        return out

    async def full_in(self, check: Check | None, target: str, last: tuple[datetime, CheckResult] | None) -> str | None:
        """For a disk: when it will be full at its rate over the check's fill window (the check's
        own estimate, `pulse/trend.py`), in words; None for other kinds."""
        if check is None or check.kind != "disk" or last is None:
            return None
        from ..pulse.disk import _full_in_text
        from ..pulse.trend import fill_rate, hours_until_full

        window = float(getattr(check.config, "fill_window", 6 * 3600.0))
        points = await self.rt.beats.series(check.name, target, "used_bytes",
                                            self.rt.clock.now() - timedelta(seconds=window))
        rate = fill_rate(points)
        over = f"over the last {format_duration(window)}"
        if rate is None:
            return f"not enough history to estimate when it fills (3 beats over 10 min {over})"
        free = last[1].metrics.get("free_bytes")
        hours = hours_until_full(free, rate) if free is not None else None
        if hours is None:
            return f"not filling: {format_size(rate)}/h {over}" if rate <= 0 else None
        return f"{_full_in_text(hours)} at {format_size(rate)}/h {over}"

    # -- incidents -----------------------------------------------------------------------------

    async def incidents(self, request: Request) -> Response:
        session = await self.pages._session(request)
        if session is None:
            return to_login(request)
        return self._page("dashboard/incidents.html", request, session,
                          {"incidents": await self.engine.incidents.list(limit=100)})

    async def incident(self, request: Request) -> Response:
        """One incident's timeline: its events, oldest first, each with what it says."""
        session, root = await self.pages._session(request), root_of(request)
        if session is None:
            return to_login(request)
        incident_id = number(request.path_params["id"])
        incident = await self.engine.incidents.get(incident_id) if incident_id is not None else None
        if incident is None:
            return self._message(request, session, "Not found", "there is no such incident", "refused", status=404,
                                 back=("incidents", "All incidents"))
        events = await self.rt.events.list(incident_id=incident.id, limit=TIMELINE_LIMIT, newest_first=False)
        return self._page("dashboard/incident.html", request, session, {
            "incident": incident, "timeline": [timeline_entry(e) for e in events],
            "truncated": len(events) == TIMELINE_LIMIT})

    # -- events --------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Events filtered by type glob, time and incident, newest first, PAGE a page."""
        session = await self.pages._session(request)
        if session is None:
            return to_login(request)
        query, problem = self._filters(request)
        events: list[Event] = []
        if problem is None:
            events = await self._select(query, newest_first=True, limit=PAGE + 1)
        older = events[PAGE - 1].id if len(events) > PAGE else None
        shown = {k: v for k, v in request.query_params.items() if k in ("type", "since", "until", "incident")}
        return self._page("dashboard/events.html", request, session, {
            "events": [(e, summary(e)) for e in events[:PAGE]], "problem": problem, "filters": shown,
            "older": older, "paged": "before" in request.query_params, "chain": await self.chain.state(),
            "types": sorted(event_type_names())}, status=400 if problem else 200)

    async def export(self, request: Request) -> Response:
        """The filtered events as JSON lines, oldest first (`fazt-agent events export`)."""
        session = await self.pages._session(request)
        if session is None:
            return Response("log in first\n", status_code=401, media_type="text/plain", headers=HEADERS)
        query, problem = self._filters(request)
        if problem is not None:
            return Response(problem + "\n", status_code=400, media_type="text/plain", headers=HEADERS)

        async def lines() -> AsyncIterator[str]:
            after = 0
            while True:
                batch = await self._select({**query, "after": after}, newest_first=False, limit=1000)
                if not batch:
                    return
                yield "".join(json.dumps(e.to_json(), default=str) + "\n" for e in batch)
                after = batch[-1].id

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
            **HEADERS, "Content-Disposition": 'attachment; filename="fazt-agent-events.jsonl"'})

    def _filters(self, request: Request) -> tuple[dict[str, Any], str | None]:
        """The events page's query: type glob, since/until (a date, UTC, or an age like 2h), incident,
        before (an id: the page after). A value it cannot read: (query so far, what is wrong)."""
        q = request.query_params
        query: dict[str, Any] = {}
        type_glob = q.get("type", "").strip()
        if type_glob:
            if not TYPE_GLOB.match(type_glob):
                return query, "type: letters, digits, '.', '_', '-' and the glob characters * ? [ ] only"
            query["type"] = type_glob
        now = self.rt.clock.now()
        for key in ("since", "until"):
            text = q.get(key, "").strip()
            if text:
                at = read_time(text, now)
                if at is None:
                    return query, (f"{key}: {text[:40]!r} is neither a date (2025-06-01T14:30, UTC) "
                                   "nor an age (30m, 2h, 7d)")
                query[key] = at
        for key in ("incident", "before"):
            text = q.get(key, "").strip()
            if text:
                value = number(text)
                if value is None:
                    return query, f"{key}: {text[:20]!r} is not an id"
                query[key] = value
        return query, None

    async def _select(self, query: dict[str, Any], *, newest_first: bool, limit: int) -> list[Event]:
        where, params = [], []
        for key, sql in (("type", "type GLOB ?"), ("since", "ts >= ?"), ("until", "ts < ?"),
                         ("incident", "incident_id = ?"), ("before", "id < ?"), ("after", "id > ?")):
            if query.get(key) is not None:
                where.append(sql)
                value = query[key]
                params.append(iso(value) if isinstance(value, datetime) else value)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
        rows = await self.rt.store.fetchall(sql, (*params, limit))
        return [Event(r["id"], parse_iso(r["ts"]), r["type"], r["source"], r["incident_id"], json.loads(r["data"]),
                      r["hash"]) for r in rows]

    async def event(self, request: Request) -> Response:
        session = await self.pages._session(request)
        if session is None:
            return to_login(request)
        event_id = number(request.path_params["id"])
        e = await self.rt.events.get(event_id) if event_id is not None else None
        if e is None:
            return self._message(request, session, "Not found", "there is no such event (retention may have "
                                 "removed it)", "refused", status=404, back=("events", "All events"))
        store = self.rt.store
        before = await store.scalar("SELECT MAX(id) FROM events WHERE id < ?", (e.id,))
        after = await store.scalar("SELECT MIN(id) FROM events WHERE id > ?", (e.id,))
        return self._page("dashboard/event.html", request, session, {
            "e": e, "entry": timeline_entry(e), "data": json.dumps(e.data, indent=2, ensure_ascii=False, default=str),
            "before": before, "after": after, "chain": await self.chain.state()})

    async def verify(self, request: Request) -> Response:
        """Walk the whole chain again (read scope: it changes nothing)."""
        root = root_of(request)
        session, form = await self.pages._session(request), await self.pages._form(request)
        refused = self._guard(session, form, "read")
        if refused is not None:
            await self._record_refusal(request, session, "verify the event chain", refused[0])
            return self._refused(request, session, refused, back=("events", "Back to the events"))
        await self.chain.state(full=True)
        return RedirectResponse(f"{root}events#chain", status_code=303, headers=HEADERS)

    # -- apps ----------------------------------------------------------------------------------

    async def apps(self, request: Request) -> Response:
        session = await self.pages._session(request)
        if session is None:
            return to_login(request)
        apps = await asyncio.to_thread(self._apps)
        return self._page("dashboard/apps.html", request, session, {"apps": apps})

    def _apps(self) -> list[dict[str, Any]]:
        """Each app with its releases and its last log lines (apps.db, read on a thread)."""
        from ..apps.deploy import describe
        from ..apps.store import AppStore, has_apps

        if not has_apps(self.rt.config.data_dir):
            return []
        store = AppStore(self.rt.config.data_dir, create=False)
        try:
            out = []
            for app in store.apps():
                info = describe(store, app, self.rt.config.file.apps.domain)
                info["releases"] = [r.to_json(r.id == app["current_release"]) for r in store.releases(app["id"])]
                for r in info["releases"]:
                    r["size"] = format_size(r["bytes"])
                info["logs"] = store.logs(app["id"], 50)
                out.append(info)
            return out
        finally:
            store.close()

    async def rollback(self, request: Request) -> Response:
        """Make an earlier release current (operate), as `fazt-agent apps rollback` does."""
        from ..apps.store import AppError

        name = request.path_params["name"]
        session, form = await self.pages._session(request), await self.pages._form(request)
        to = number(form.get("to", ""))
        action = f"rollback {name[:64]} to release {form.get('to', '?')[:20]}"
        back = ("apps", "Back to the apps")
        refused = self._guard(session, form, "operate")
        if refused is None and to is None:
            refused = ("the form names no release", 400)
        if refused is not None:
            await self._record_refusal(request, session, action, refused[0])
            return self._refused(request, session, refused, back=back)
        assert session is not None
        from ..apps.deploy import rollback

        try:
            r = await rollback(self.rt, name, to, f"requested on the dashboard by {session.name}")
        except AppError as e:
            await self._record_refusal(request, session, action, str(e))
            return self._message(request, session, "Refused", str(e), "refused", status=409, back=back)
        return self._message(request, session, "Rolled back",
                             f"{name}: release {r['to_release']} live again (was {r['from_release']})", "ok", back=back)

    # -- live updates --------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        """Server-sent events: `checks` (the overview's rows, after a beat) and `change` (an event
        that changes another section), each with the event id it follows; `?after=ID` starts after
        that event (the page's newest), as does a reconnecting browser's Last-Event-ID."""
        session = await self.pages._session(request)
        if session is None:
            return Response("log in first\n", status_code=401, media_type="text/plain", headers=HEADERS)
        if self.live_streams.full:
            return Response("too many live streams; reload later\n", status_code=503, media_type="text/plain",
                            headers={**HEADERS, "Retry-After": "30"})
        after = number(request.headers.get("last-event-id", "")) or number(request.query_params.get("after", ""))
        if after is None:
            after = await self.rt.events.last_id()

        async def allowed() -> bool:
            return await self.pages._session(request) is not None

        return StreamingResponse(self.live_streams.stream(after, self._messages, allowed),
                                 media_type="text/event-stream", headers={**HEADERS, "X-Accel-Buffering": "no"})

    async def _messages(self, events: list[Event]) -> str:
        """What the overview needs to know of new events: `change` for each that changes a section,
        and after beats one `checks` with every row as it is now."""
        out = []
        for e in events:
            if e.type.startswith(CHANGES):
                out.append(sse("change", {"id": e.id, "type": e.type, "incident_id": e.incident_id,
                                          "summary": summary(e)}, e.id))
        beats = [e for e in events if e.type == "pulse.beat"]
        if beats:
            out.append(sse("checks", {"beat": await self.last_beat(), "rows": await self.check_rows()}, beats[-1].id))
        return "".join(out)

    # -- rendering -----------------------------------------------------------------------------

    def _render(self, template: str, context: dict[str, Any]) -> str:
        if self._env is None:
            import jinja2

            from ..messages import all_steps

            env = jinja2.Environment(loader=jinja2.PackageLoader("fazt_agent.web", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
            env.globals.update(when=when, stamp=stamp, all_steps=all_steps, closed=self.pages._closed,
                               until=self.pages._until)
            self._env = env
        return self._env.get_template(template).render(**context)

    def _page(self, template: str, request: Request, session: Session | None, context: dict[str, Any], *,
              status: int = 200) -> HTMLResponse:
        """A page with the dashboard's headers; `root` leads from its URL to the control plane's root
        (relative links work behind a proxy that serves the agent under a path)."""
        from ..mcp.auth import covers

        can = {s: session is not None and covers(session.scope, s) for s in ("operate", "admin")}
        html = self._render(template, {"host": self.engine.host, "root": root_of(request), "session": session,
                                       "csrf": self.pages._csrf(session) if session else "", "can": can,
                                       "path": request.url.path, **context})
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def _message(self, request: Request, session: Session | None, heading: str, text: str, tone: str, *,
                 status: int = 200, back: tuple[str, str] | None = None, halt: Any = None) -> HTMLResponse:
        return self._page("message.html", request, session, {"heading": heading, "text": text, "tone": tone,
                                                             "halt": halt, "back": back}, status=status)

    def _ago(self, at: datetime) -> str:
        seconds = (self.rt.clock.now() - at).total_seconds()
        return "just now" if seconds < 1 else f"{format_duration(seconds)} ago"

    async def static(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        if name not in self._static:
            self._static[name] = resources.files("fazt_agent.web").joinpath(f"static/{name}").read_bytes()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(self._static[name], media_type=kind, headers={**HEADERS, "Cache-Control": "max-age=3600"})


# -- helpers -------------------------------------------------------------------------------------

def root_of(request: Request) -> str:
    """The relative way from a page's URL to the control plane's root: "./" for /events, "../" for
    /trends/disk."""
    depth = request.url.path.count("/")
    return "./" if depth <= 1 else "../" * (depth - 1)


def to_login(request: Request) -> Response:
    """To the login, which brings the owner back to this page (`next`, relative like every link here)."""
    from urllib.parse import quote

    back = (request.url.path.lstrip("/") or "./") + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{root_of(request)}login" + (f"?next={quote(back, safe='')}" if back else ""),
                            status_code=303, headers=HEADERS)


def severity_rank(severity: str) -> int:
    from ..pulse.base import SEVERITY

    return SEVERITY.get(severity, 0)


def check_row(r: CheckResult, ts: datetime, now: datetime) -> dict[str, Any]:
    """One row of the overview: the result's status, its main value and message, when measured."""
    metric = primary_metric(r.kind, r.metrics)
    age = (now - ts).total_seconds()
    return {"key": f"{r.check}|{r.target}", "check": r.check, "target": r.target, "status": r.status,
            "value": f"{metric_label(metric)} {format_metric(metric, r.metrics[metric])}" if metric else "",
            "message": r.message,
            "measured": f"{when(ts)} ({'just now' if age < 1 else format_duration(age) + ' ago'})"}


def read_time(text: str, now: datetime) -> datetime | None:
    """An age ("2h": that long before now) or a date and time (UTC unless it says otherwise)."""
    try:
        return now - timedelta(seconds=parse_duration(text))
    except (ValueError, TypeError):
        pass
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def event_type_names() -> list[str]:
    from ..event_types import EVENT_TYPES

    return list(EVENT_TYPES)
