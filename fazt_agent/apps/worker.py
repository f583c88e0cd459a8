"""A JS worker process: reads one job per line on stdin, answers one JSON line on stdout.

Each job runs in a fresh QuickJS context (nothing survives between requests) with a memory limit.
No QuickJS time limit is set, because the binding cannot call back into Python while one is set;
the parent kills this process at the deadline instead. `__host` never raises: a Python exception
caught by a JS try/catch breaks the binding, so every failure becomes `{"e": message}`.

Started as `python -m fazt_agent.apps.worker`; imports only quickjs and the app data module.
"""

from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path
from typing import Any, Callable

import quickjs

from .data import AppData, DataError

PRELUDE = (Path(__file__).parent / "prelude.js").read_text()
MAX_LOGS = 200
MAX_LOG_CHARS = 4000
_sources: dict[str, str] = {}


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


class Prepared:
    """A fresh context with the prelude evaluated, made before its request arrives (so the ~1 ms
    of compiling the prelude is not on the request's path); used for one request only."""

    def __init__(self, memory: int):
        self.memory = memory
        self.state: dict[str, Any] = {}
        self.ctx = quickjs.Context()
        self.ctx.set_memory_limit(memory)
        self.ctx.set_max_stack_size(512 * 1024)
        self.ctx.add_callable("__host", self.host)
        self.ctx.eval(PRELUDE)

    def host(self, op: str, args: str) -> str:
        try:
            return json.dumps({"v": self.state["ops"][op](*json.loads(args))})
        except DataError as e:
            return json.dumps({"e": str(e)})
        except TypeError as e:
            return json.dumps({"e": f"{op}: bad arguments ({e})"})
        except Exception as e:  # never across the binding
            return json.dumps({"e": f"{op} failed: {type(e).__name__}: {e}"})


def run(job: dict[str, Any], prepared: Prepared | None = None) -> dict[str, Any]:
    files: dict[str, str] = job["files"]
    logs: list[dict[str, str]] = []
    data = AppData(Path(job["data"]))

    def log(level: str, message: str) -> None:
        if len(logs) < MAX_LOGS:
            logs.append({"level": level, "message": str(message)[:MAX_LOG_CHARS]})

    ops: dict[str, Callable[..., Any]] = {
        "log": log,
        "require": lambda frm, spec: {"path": (p := resolve(files, frm, spec)), "source": source(files[p])},
        "kv.set": data.kv_set, "kv.get": data.kv_get, "kv.delete": data.kv_delete, "kv.list": data.kv_list,
        "ds.insert": data.insert, "ds.find": data.find, "ds.findOne": data.find_one, "ds.update": data.update,
        "ds.delete": data.delete, "ds.count": data.count,
    }
    try:
        if prepared is None or prepared.memory != job["memory"]:
            prepared = Prepared(job["memory"])
        prepared.state["ops"] = ops
        ctx = prepared.ctx
        ctx.set("__job", json.dumps({"request": job["request"], "env": job["env"],
                                     "app": {"id": job["app_id"], "name": job["name"]}}))
        ctx.eval("__start(__job)")
        ctx.set("__src", source(files["api/main.js"]))
        out = json.loads(ctx.eval("__run(__src)"))
    except quickjs.JSException as e:   # out of memory, stack overflow: the context cannot even catch it
        out = {"error": str(e).splitlines()[0] if str(e) else "the script failed"}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    finally:
        data.close()
    out["logs"] = logs
    return out


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout
    prepared: Prepared | None = None
    stdout.write("ready\n")   # imported and loaded: the parent's deadlines start from here
    stdout.flush()
    while line := stdin.readline():
        memory = None
        try:
            job = json.loads(line)
            memory = job["memory"]
            answer = run(job, prepared)
        except Exception as e:  # a bad job: answer, keep serving
            answer = {"error": f"worker: {type(e).__name__}: {e}", "logs": []}
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()
        prepared = None   # the used context goes; the next one is made while no request waits
        if isinstance(memory, int):
            try:
                prepared = Prepared(memory)
            except Exception:
                prepared = None


if __name__ == "__main__":
    main()
