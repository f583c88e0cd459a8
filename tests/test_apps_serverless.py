"""Apps, slice 2 (issue 13): api/main.js on QuickJS through the apps plane of a real daemon,
called with a real HTTP client: Fazt's contract, isolation, deadlines, memory, concurrency."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import psutil

from conftest import Ops
from test_apps_deploy import Plane, deploy, plane, site  # noqa: F401 (plane is a fixture)

CRUD = {
    "api/main.js": """
const items = require('./lib/items.js');
const COLL = 'items';
function handler(req) {
  const parts = req.path.split('/').filter(Boolean);       // ['api', 'items', id?]
  if (parts[1] === 'whoami') return {id: fazt.app.id, name: fazt.app.name, mode: fazt.env.get('MODE', 'dev'),
                                     hasKey: fazt.env.has('API_KEY'), missing: fazt.env.get('NOPE')};
  if (parts[1] === 'kv') return items.kvDemo(req.query);
  if (parts[1] !== 'items') return respond(404, {error: 'no route ' + req.path});
  const id = parts[2];
  if (req.method === 'GET' && !id) {
    const q = {};
    if (req.query.min) q.price = {$gte: Number(req.query.min)};
    if (req.query.tag) q.tags = {$contains: req.query.tag};
    if (req.query.not) q.name = {$nin: req.query.not.split(',')};
    return {items: fazt.app.ds.find(COLL, q, {order: req.query.order || 'name', limit: Number(req.query.limit || 100),
                                               offset: Number(req.query.offset || 0)}),
            count: fazt.app.ds.count(COLL, q)};
  }
  if (req.method === 'GET') {
    const it = fazt.app.ds.findOne(COLL, {id: id});
    return it ? it : respond(404, {error: 'no item ' + id});
  }
  if (req.method === 'POST') {
    console.log('creating', req.body.name);
    return respond(201, fazt.app.ds.insert(COLL, items.validate(req.body)));
  }
  if (req.method === 'PATCH') {
    const n = fazt.app.ds.update(COLL, {id: id}, req.body);
    return n ? fazt.app.ds.findOne(COLL, {id: id}) : respond(404, {error: 'no item ' + id});
  }
  if (req.method === 'DELETE') return {deleted: fazt.app.ds.delete(COLL, {id: id})};
  return respond(405, {error: 'method ' + req.method});
}
handler(request)
""",
    "api/lib/items.js": """
exports.validate = function (body) {
  if (!body || typeof body.name !== 'string') throw new Error('name is required');
  return {name: body.name, price: body.price || 0, tags: body.tags || []};
};
exports.kvDemo = function (q) {
  const kv = fazt.app.kv;
  if (q.op === 'set') return kv.set(q.key, {v: q.value}, q.ttl ? Number(q.ttl) : undefined);
  if (q.op === 'get') return {value: kv.get(q.key)};
  if (q.op === 'delete') return {deleted: kv.delete(q.key)};
  return kv.list(q.prefix || '');
};
""",
    "index.html": "<h1>crud</h1>",
}


def api(p: Plane, method: str, path: str, app: str = "crud", **kw: object) -> httpx.Response:
    return p.client.request(method, path, headers={"host": f"{app}.apps.test"}, **kw)  # type: ignore[arg-type]


def test_a_crud_app_over_fazt_app_ds_kv_env_and_logs(plane: Plane, tmp_path: Path) -> None:
    r = deploy(plane.ops, site(tmp_path / "crud", CRUD), "crud")
    assert r.returncode == 0, r.stderr
    assert plane.ops.cli("apps", "env", "set", "crud", "MODE", "prod").returncode == 0
    assert plane.ops.cli("apps", "env", "set", "crud", "API_KEY", "k").returncode == 0
    who = api(plane, "GET", "/api/whoami").json()
    assert who == {"id": 1, "name": "crud", "mode": "prod", "hasKey": True, "missing": None}

    made = []
    for name, price, tags in [("pear", 3, ["fruit"]), ("apple", 1, ["fruit", "red"]), ("brick", 9, [])]:
        c = api(plane, "POST", "/api/items", json={"name": name, "price": price, "tags": tags})
        assert c.status_code == 201 and c.headers["content-type"] == "application/json", c.text
        made.append(c.json())
    assert [m["name"] for m in made] == ["pear", "apple", "brick"] and all(m["id"] for m in made)
    listing = api(plane, "GET", "/api/items").json()
    assert [i["name"] for i in listing["items"]] == ["apple", "brick", "pear"] and listing["count"] == 3
    assert [i["name"] for i in api(plane, "GET", "/api/items?min=3&order=-price").json()["items"]] == ["brick", "pear"]
    assert [i["name"] for i in api(plane, "GET", "/api/items?tag=red").json()["items"]] == ["apple"]
    assert [i["name"] for i in api(plane, "GET", "/api/items?not=apple,pear").json()["items"]] == ["brick"]
    assert [i["name"] for i in api(plane, "GET", "/api/items?limit=1&offset=1").json()["items"]] == ["brick"]
    pear = made[0]["id"]
    up = api(plane, "PATCH", f"/api/items/{pear}", json={"$inc": {"price": 2}, "$set": {"ripe": True}})
    assert up.json()["price"] == 5 and up.json()["ripe"] is True
    assert "ripe" not in api(plane, "PATCH", f"/api/items/{pear}", json={"$unset": {"ripe": 1}}).json()
    assert api(plane, "DELETE", f"/api/items/{pear}").json() == {"deleted": 1}
    assert api(plane, "GET", f"/api/items/{pear}").status_code == 404
    bad = api(plane, "POST", "/api/items", json={"price": 1})
    assert bad.status_code == 500 and bad.json()["error"] == "name is required"
    form = api(plane, "POST", "/api/items", data={"name": "form-made"})
    assert form.status_code == 201 and form.json()["name"] == "form-made"

    assert api(plane, "GET", "/api/kv?op=set&key=a:1&value=x").json() is True
    assert api(plane, "GET", "/api/kv?op=set&key=a:2&value=y&ttl=150").json() is True
    assert api(plane, "GET", "/api/kv?op=set&key=b:1&value=z").json() is True
    assert api(plane, "GET", "/api/kv?op=get&key=a:1").json() == {"value": {"v": "x"}}
    assert [e["key"] for e in api(plane, "GET", "/api/kv?op=list&prefix=a:").json()] == ["a:1", "a:2"]
    time.sleep(0.3)
    assert api(plane, "GET", "/api/kv?op=get&key=a:2").json() == {"value": None}    # expired
    assert api(plane, "GET", "/api/kv?op=delete&key=a:1").json() == {"deleted": True}
    assert [e["key"] for e in api(plane, "GET", "/api/kv?op=list").json()] == ["b:1"]

    assert api(plane, "GET", "/").text == "<h1>crud</h1>"           # static beside the api
    logs = json.loads(plane.ops.cli("apps", "logs", "crud", "--json").stdout)
    messages = [e["message"] for e in logs]
    assert "creating pear" in messages and "creating brick" in messages
    assert any("name is required" in m and e["level"] == "error" for e, m in zip(logs, messages))


def test_every_respond_form_and_completion_values(plane: Plane, tmp_path: Path) -> None:
    main = """
const f = request.query.f;
f === 'body' ? respond('plain text') :
f === 'status' ? respond(204) :
f === 'status-body' ? respond(201, {made: true}) :
f === 'headers' ? respond(202, '<b>hi</b>', {'Content-Type': 'text/html', 'X-Custom': 'yes'}) :
f === 'string' ? 'just a string' :
f === 'object' ? {a: [1, 2], method: request.method, q: request.query, body: request.body} :
f === 'throw' ? (console.log('before'), fazt.log.warn('careful'), (function () { throw new Error('boom'); })()) :
undefined
"""
    assert deploy(plane.ops, site(tmp_path / "r", {"api/main.js": main, "index.html": "x"}), "resp").returncode == 0
    get = lambda f, **kw: api(plane, kw.pop("method", "GET"), f"/api?f={f}", app="resp", **kw)  # noqa: E731
    r = get("body")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "plain text", "text/plain; charset=utf-8")
    assert get("status").status_code == 204
    r = get("status-body")
    assert (r.status_code, r.json(), r.headers["content-type"]) == (201, {"made": True}, "application/json")
    r = get("headers")
    assert (r.status_code, r.text, r.headers["content-type"], r.headers["x-custom"]) == \
        (202, "<b>hi</b>", "text/html", "yes")
    assert get("string").text == "just a string"
    r = get("object", method="POST", json={"k": [1]})
    assert r.json() == {"a": [1, 2], "method": "POST", "q": {"f": "object"}, "body": {"k": [1]}}
    r = get("throw")
    assert r.status_code == 500 and r.json() == {"error": "boom", "logs": ["before", "careful"]}
    assert get("none").status_code == 204


def test_require_chains_cycles_and_escapes(plane: Plane, tmp_path: Path) -> None:
    files = {
        "api/main.js": """
const out = {};
out.chain = require('./a.js').value;                 // a -> lib/b -> lib/c
out.cycle = require('./even.js').isEven(10);        // even <-> odd
out.same = require('./a.js') === require('./a');    // cached per request
out.loads = globalThis.loads;
out.refused = ['../secret.js', '/etc/passwd', 'fs', './lib/../../x.js', './nope.js'].map(function (s) {
  try { require(s); return 'loaded ' + s; } catch (e) { return e.message; }
});
out
""",
        "api/a.js": "globalThis.loads = (globalThis.loads || 0) + 1; module.exports = {value: 'a>' + require('./lib/b.js')};",
        "api/lib/b.js": "module.exports = 'b>' + require('./c.js');",
        "api/lib/c.js": "module.exports = 'c';",
        "api/even.js": "const odd = require('./odd.js'); exports.isEven = function (n) { return n === 0 ? true : odd.isOdd(n - 1); };",
        "api/odd.js": "const even = require('./even.js'); exports.isOdd = function (n) { return n === 0 ? false : even.isEven(n - 1); };",
        "secret.js": "module.exports = 'secret';",
        "index.html": "x",
    }
    assert deploy(plane.ops, site(tmp_path / "q", files), "req").returncode == 0
    first = api(plane, "GET", "/api", app="req").json()
    assert first["chain"] == "a>b>c" and first["cycle"] is True and first["same"] is True and first["loads"] == 1
    assert first["refused"] == [
        "require('../secret.js'): outside api/",
        "require('/etc/passwd'): only relative paths ('./x.js') under api/ can be required",
        "require('fs'): only relative paths ('./x.js') under api/ can be required",
        "require('./lib/../../x.js'): outside api/",
        "require('./nope.js'): no such file 'api/nope.js' in api/",
    ]
    assert api(plane, "GET", "/api", app="req").json()["loads"] == 1   # the module cache is per request


def test_no_state_leaks_between_requests_or_apps(plane: Plane, tmp_path: Path) -> None:
    main = "globalThis.n = (globalThis.n || 0) + 1; var seen = typeof leaked; globalThis.leaked = fazt.app.name; ({n: globalThis.n, seen: seen})"
    for app in ("one", "two"):
        assert deploy(plane.ops, site(tmp_path / app, {"api/main.js": main, "index.html": "x"}), app).returncode == 0
    answers = [api(plane, "GET", "/api", app=app).json() for app in ("one", "two") * 4]
    assert answers == [{"n": 1, "seen": "undefined"}] * 8


def js_workers(p: Plane) -> list[psutil.Process]:
    return [c for c in psutil.Process(p.proc.pid).children() if "fazt_agent.apps.worker" in " ".join(c.cmdline())]


def test_no_builtin_prototype_or_api_patch_survives_into_the_next_request(plane: Plane, tmp_path: Path) -> None:
    """Each request gets a fresh context, the prelude's lazily compiled globals (console, fazt,
    require) included: whatever one request patches, the next one on the same worker never sees."""
    main = """
if (request.query.f === 'dirty') {
  fazt.app.kv.get = function () { return 'patched'; };
  require = function () { return 'patched'; };
  globalThis.console = {log: function () {}};
  Array.prototype.map = function () { return 'patched'; };
  Array.prototype.extra = 1;
  Object.prototype.polluted = 'yes';
  String.prototype.trim = function () { return 'patched'; };
  JSON.parse = function () { return 'patched'; };
  function leakedFn() {}
  var leakedVar = 1;
  respond = function () { return 'patched'; };
  ({dirty: true, console: typeof console.info, kv: fazt.app.kv.get('x'), req: require('./lib.js')})
} else {
  console.log('clean', [1, 2].map(function (x) { return x * 2; }));
  ({map: [1, 2].map(function (x) { return x * 2; }), extra: typeof [].extra, polluted: typeof ({}).polluted,
    trim: ' a '.trim(), parse: JSON.parse('[1]'), kv: fazt.app.kv.get('x'), req: require('./lib.js'),
    info: typeof console.info, fn: typeof leakedFn, v: typeof leakedVar, status: respond(201, 'x').status})
}
"""
    files = {"api/main.js": main, "api/lib.js": "module.exports = 'lib';", "index.html": "x"}
    for app in ("one", "two"):
        assert deploy(plane.ops, site(tmp_path / app, files), app).returncode == 0
    clean = {"map": [2, 4], "extra": "undefined", "polluted": "undefined", "trim": "a", "parse": [1], "kv": None,
             "req": "lib", "info": "function", "fn": "undefined", "v": "undefined", "status": 201}
    for app in ("one", "two", "one"):
        dirty = api(plane, "GET", "/api?f=dirty", app="one")
        assert dirty.json() == {"dirty": True, "console": "undefined", "kv": "patched", "req": "patched"}, dirty.text
        assert api(plane, "GET", "/api", app=app).json() == clean
    assert len(js_workers(plane)) == 1      # one after the other: every request ran on the same worker
    logs = [e["message"] for e in json.loads(plane.ops.cli("apps", "logs", "two", "--json").stdout)]
    assert logs == ["clean [2,4]"]


def test_js_workers_yield_to_the_daemon(plane: Plane, tmp_path: Path) -> None:
    """JS workers run at nice 10 (a worker woken by a job does not preempt the daemon, whose loop
    also serves the static files and the control plane) with mimalloc loaded (a worker frees and
    makes a whole QuickJS runtime per request; scripts/system-deps installs Debian's libmimalloc2.0)
    and, for glibc's malloc, a larger cache; the daemon itself keeps glibc's malloc."""
    assert deploy(plane.ops, site(tmp_path / "n", {"api/main.js": "'ok'", "index.html": "x"}), "nice").returncode == 0
    assert api(plane, "GET", "/api", app="nice").text == "ok"
    workers = js_workers(plane)
    daemon_nice = psutil.Process(plane.proc.pid).nice()
    assert workers
    for w in workers:
        assert w.nice() == min(19, daemon_nice + 10)
        assert "glibc.malloc.tcache_count=256" in w.environ().get("GLIBC_TUNABLES", "")
        assert any("libmimalloc" in (m.path or "") for m in w.memory_maps()), "mimalloc is not loaded in the JS worker"
    assert not any("libmimalloc" in (m.path or "") for m in psutil.Process(plane.proc.pid).memory_maps())


def test_fazt_app_calls_fill_missing_arguments_and_drop_extra_ones(plane: Plane, tmp_path: Path) -> None:
    main = """
const kv = fazt.app.kv, ds = fazt.app.ds;
kv.set('a', undefined);
kv.set('b', 2, undefined, 'extra');
ds.insert('c', {x: 1});
ds.insert('c', {x: 2}, 'extra');
const out = {a: kv.get('a'), keys: kv.list().map(function (e) { return e.key; }), all: ds.find('c').length,
             falsy: ds.find('c', 0, '').length, count: ds.count('c'), one: ds.findOne('c', {x: 2}).x,
             updated: ds.update('c', null, {$set: {y: 1}}), deleted: ds.delete('c', {x: 1}), left: ds.count('c', false)};
try { kv.get(); } catch (e) { out.noKey = e.message; }
try { __host('kv.get', '[]'); } catch (e) { out.never = 'thrown'; }
out.direct = JSON.parse(__host('kv.get', '[]'));
out
"""
    assert deploy(plane.ops, site(tmp_path / "d", {"api/main.js": main, "index.html": "x"}), "defaults").returncode == 0
    r = api(plane, "GET", "/api", app="defaults")
    assert r.json() == {"a": None, "keys": ["a", "b"], "all": 2, "falsy": 2, "count": 2, "one": 2, "updated": 2,
                        "deleted": 1, "left": 1, "noKey": "the key must be a non-empty string",
                        "direct": {"e": "kv.get: takes 1 argument as a JSON array"}}, r.text


def test_a_body_and_an_answer_larger_than_a_pipe_buffer(plane: Plane, tmp_path: Path) -> None:
    """The job goes to the worker in several writes and the answer comes back in several reads."""
    main = "({got: request.body.length, echo: request.body.slice(0, 5), big: 'y'.repeat(Number(request.query.n))})"
    assert deploy(plane.ops, site(tmp_path / "b", {"api/main.js": main, "index.html": "x"}), "big").returncode == 0
    body = "x" * (900 * 1024)
    for _ in range(2):
        r = plane.client.post("/api?n=3000000", content=body,
                              headers={"host": "big.apps.test", "content-type": "text/plain"})
        assert r.status_code == 200, r.text[:200]
        out = r.json()
        assert (out["got"], out["echo"], len(out["big"])) == (len(body), "xxxxx", 3_000_000)


def test_an_infinite_loop_is_killed_at_the_deadline_and_a_memory_bomb_is_refused(plane: Plane, tmp_path: Path) -> None:
    main = """
request.query.f === 'loop' ? (function () { while (true) {} })() :
request.query.f === 'bomb' ? (function () { var a = []; while (true) a.push(new Array(100000).fill('xxxxxxxx')); })() :
'fine'
"""
    assert deploy(plane.ops, site(tmp_path / "w", {"api/main.js": main, "index.html": "x",
                                                  "fazt.toml": 'timeout = "400ms"\n'}), "wild").returncode == 0
    assert api(plane, "GET", "/api", app="wild").text == "fine"
    t0 = time.monotonic()
    r = api(plane, "GET", "/api?f=loop", app="wild")
    took = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["error"] == "timed out: killed at the 400 ms deadline"
    assert 0.35 < took < 2.0, took
    assert api(plane, "GET", "/api", app="wild").text == "fine"
    # more loops at once than workers (2): each is killed, the requests waiting behind them are served
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(api, plane, "GET", "/api?f=loop", app="wild") for _ in range(3)]
        fine = pool.submit(api, plane, "GET", "/api", app="wild")
        assert [f.result().status_code for f in loops] == [504, 504, 504]
        assert fine.result().text == "fine"
    # the memory bomb under a deadline long enough that the heap limit is what stops it
    assert deploy(plane.ops, site(tmp_path / "m", {"api/main.js": main, "index.html": "x",
                                                  "fazt.toml": 'timeout = "20s"\n'}), "bomb").returncode == 0
    r = api(plane, "GET", "/api?f=bomb", app="bomb")
    assert r.status_code == 500 and "out of memory" in r.json()["error"], r.text
    assert api(plane, "GET", "/api", app="bomb").text == "fine"
    assert api(plane, "GET", "/api", app="wild").text == "fine"
    assert plane.get("wild").text == "x"                    # the daemon serves on
    logs = [e["message"] for e in json.loads(plane.ops.cli("apps", "logs", "wild", "--json").stdout)]
    assert any("killed at the 400 ms deadline" in m for m in logs)


def test_fifty_concurrent_requests(plane: Plane, tmp_path: Path) -> None:
    main = "fazt.app.kv.set('k' + request.query.i, Number(request.query.i)); ({i: Number(request.query.i), got: fazt.app.kv.get('k' + request.query.i)})"
    assert deploy(plane.ops, site(tmp_path / "c", {"api/main.js": main, "index.html": "x"}), "busy").returncode == 0

    def one(i: int) -> tuple[int, object]:
        with httpx.Client(base_url=f"http://127.0.0.1:{plane.port}", timeout=30) as c:
            r = c.get(f"/api?i={i}", headers={"host": "busy.apps.test"})
            return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(200, {"i": i, "got": i}) for i in range(50)]


def test_deploy_health_checks_the_api_path(ops: Ops, tmp_path: Path) -> None:
    from test_apps_deploy import configure

    configure(ops)
    good = {"api/main.js": "respond(200, {ok: true})", "index.html": "x", "fazt.toml": 'health = "/api/health"\n'}
    assert deploy(ops, site(tmp_path / "g", good), "svc").returncode == 0
    bad = {**good, "api/main.js": "throw new Error('broken')"}
    r = deploy(ops, site(tmp_path / "b", bad), "svc")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["rolled_back"] is True and out["problem"] == "GET /api/health answered 500"
