"""A JS worker process: reads one job per line on stdin, answers one JSON line on stdout.

A job line is `SPEC<TAB>REQUEST` (js.JsPool.frame): SPEC, the app's side, is the same bytes for
every request to a release and is parsed once; REQUEST (JSON) goes to the JS context as it is.

Each job runs in a fresh QuickJS context (nothing survives between requests) with a memory limit.
The context is made, and the core of the prelude compiled in it, after the previous answer is
written and before the next job arrives; it serves one request and is thrown away. No QuickJS
time limit is set, because the binding cannot call back into Python while one is set; the parent
kills this process at the deadline instead. `__host` and `__part` never raise: a Python exception
caught by a JS try/catch breaks the binding, so every failure becomes `{"e": message}`.

Started as `python -m fazt_agent.apps.worker`; imports only quickjs and the app data module.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
from pathlib import Path
from typing import Any, Callable

import quickjs

from .data import AppData, DataError

NICE = 10   # below the daemon: under load its own loop (pulse, control plane, static files) comes first
MAX_LOGS = 200
MAX_LOG_CHARS = 4000
_sources: dict[str, str] = {}


def split_prelude(text: str) -> tuple[str, dict[str, str]]:
    """prelude.js as (core, {part name: source}): parts start at `//# part NAME` lines."""
    chunks = text.split("\n//# part ")
    parts = {}
    for chunk in chunks[1:]:
        name, _, body = chunk.partition("\n")
        parts[name.strip()] = body
    return chunks[0], parts


CORE, PARTS = split_prelude((Path(__file__).parent / "prelude.js").read_text())
NO_PART = "(function () { return undefined; })"


def part(name: Any) -> str:
    """`__part(name)`: a part's source (reachable from the app's code too, so it never raises)."""
    return PARTS.get(name, NO_PART) if isinstance(name, str) else NO_PART


def resolve(files: dict[str, str], frm: str, spec: str) -> str:
    """The file `require(spec)` from `frm` means: relative, under api/, an existing .js file."""
    if not isinstance(spec, str) or not spec.startswith(("./", "../")):
        raise DataError(f"require({spec!r}): only relative paths ('./x.js') under api/ can be required")
    path = posixpath.normpath(posixpath.join(posixpath.dirname(frm), spec))
    if not path.startswith("api/"):
        raise DataError(f"require({spec!r}): outside api/")
    for candidate in (path, path + ".js", path + "/index.js"):
        if candidate in files:
            return candidate
    raise DataError(f"require({spec!r}): no such file {path!r} in api/")


def source(blob: str) -> str:
    text = _sources.get(blob)
    if text is None:
        text = Path(blob).read_text(encoding="utf-8", errors="replace")
        if len(_sources) > 500:
            _sources.clear()
        _sources[blob] = text
    return text


def _or_empty(value: Any) -> Any:
    """JS's `value || {}` on a decoded argument (an empty object or array is truthy in JS)."""
    return {} if value is None or (not value and not isinstance(value, (dict, list))) else value


class Job:
    """The host side of one request: its app, its data file (opened on first use), its logs."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.logs: list[dict[str, str]] = []
        self.data = AppData(Path(spec["data"]))

    def log(self, level: str, message: Any) -> None:
        if len(self.logs) < MAX_LOGS:
            self.logs.append({"level": str(level), "message": str(message)[:MAX_LOG_CHARS]})

    def require(self, frm: str, spec: str) -> dict[str, str]:
        files = self.spec["files"]
        path = resolve(files, frm, spec)
        return {"path": path, "source": source(files[path])}

    def app(self) -> dict[str, Any]:
        return {"id": self.spec["app_id"], "name": self.spec["name"], "env": self.spec["env"]}


# op -> (what it does, its arity); the prelude passes each op exactly its arity (a missing argument
# as null), so defaults are filled here
OPS: dict[str, tuple[Callable[..., Any], int]] = {
    "log": (Job.log, 2), "require": (Job.require, 2), "app": (Job.app, 0),
    "kv.set": (lambda j, key, value, ttl: j.data.kv_set(key, value, ttl), 3),
    "kv.get": (lambda j, key: j.data.kv_get(key), 1),
    "kv.delete": (lambda j, key: j.data.kv_delete(key), 1),
    "kv.list": (lambda j, prefix: j.data.kv_list("" if prefix is None else prefix), 1),
    "ds.insert": (lambda j, coll, doc: j.data.insert(coll, doc), 2),
    "ds.find": (lambda j, coll, query, options: j.data.find(coll, _or_empty(query), _or_empty(options)), 3),
    "ds.findOne": (lambda j, coll, query: j.data.find_one(coll, _or_empty(query)), 2),
    "ds.update": (lambda j, coll, query, change: j.data.update(coll, _or_empty(query), change), 3),
    "ds.delete": (lambda j, coll, query: j.data.delete(coll, _or_empty(query)), 2),
    "ds.count": (lambda j, coll, query: j.data.count(coll, _or_empty(query)), 2),
}


class Host:
    """`__host(op, argsJson)` of one context, for the request it serves. It holds no reference
    to the context, so dropping the context frees it at once (no cycle for the GC to find)."""

    __slots__ = ("job",)

    def __init__(self) -> None:
        self.job: Job | None = None

    def __call__(self, op: Any, args: Any) -> str:
        try:
            fn, arity = OPS.get(op, (None, 0)) if isinstance(op, str) else (None, 0)
            if fn is None or self.job is None:
                raise DataError(f"no such host operation {op!r}")
            values = json.loads(args) if isinstance(args, str) else None
            if not isinstance(values, list) or len(values) != arity:
                raise DataError(f"{op}: takes {arity} argument{'' if arity == 1 else 's'} as a JSON array")
            return json.dumps({"v": fn(self.job, *values)})
        except DataError as e:
            return json.dumps({"e": str(e)})
        except TypeError as e:
            return json.dumps({"e": f"{op}: bad arguments ({e})"})
        except Exception as e:  # never across the binding
            return json.dumps({"e": f"{op} failed: {type(e).__name__}: {e}"})


class Prepared:
    """A fresh context with the core of the prelude evaluated, made before its request arrives;
    used for one request only."""

    def __init__(self, memory: int):
        self.memory = memory
        self.host = Host()
        self.ctx = quickjs.Context()
        self.ctx.set_memory_limit(memory)
        self.ctx.set_max_stack_size(512 * 1024)
        self.ctx.add_callable("__host", self.host)
        self.ctx.add_callable("__part", part)
        self.ctx.eval(CORE)


def run(spec: dict[str, Any], request: str, prepared: Prepared | None = None) -> str:
    """The answer to one request as a JSON object text (see js.response)."""
    job = Job(spec)
    try:
        if prepared is None or prepared.memory != spec["memory"]:
            prepared = Prepared(spec["memory"])
        prepared.host.job = job
        out = prepared.ctx.get("__run")(source(spec["files"]["api/main.js"]), request)
    except quickjs.JSException as e:   # out of memory, stack overflow: the context cannot even catch it
        out = json.dumps({"error": str(e).splitlines()[0] if str(e) else "the script failed"})
    except Exception as e:
        out = json.dumps({"error": f"{type(e).__name__}: {e}"})
    finally:
        job.data.close()
    if job.logs:
        out = out[:-1] + ', "logs": ' + json.dumps(job.logs) + "}"
    return out


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def main() -> None:
    stdin = sys.stdin.buffer
    specs: dict[bytes, dict[str, Any]] = {}
    prepared: Prepared | None = None
    os.nice(NICE)   # so a worker woken by a job does not preempt the daemon in the middle of a request
    _write(b"ready\n")   # imported and loaded: the parent's deadlines start from here
    while line := stdin.readline():
        memory = None
        try:
            spec_text, _, request = line.rstrip(b"\n").partition(b"\t")
            spec = specs.get(spec_text)
            if spec is None:
                if len(specs) > 100:
                    specs.clear()
                spec = specs[spec_text] = json.loads(spec_text)
            memory = spec["memory"]
            answer = run(spec, request.decode(), prepared)
        except Exception as e:  # a bad job: answer, keep serving
            answer = json.dumps({"error": f"worker: {type(e).__name__}: {e}"})
        _write(answer.encode("utf-8", "replace") + b"\n")
        prepared = None   # the used context goes; the next one is made while no request waits
        if isinstance(memory, int):
            try:
                prepared = Prepared(memory)
            except Exception:
                prepared = None


if __name__ == "__main__":
    main()
