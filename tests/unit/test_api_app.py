"""The Prometheus HTTP API over an in-memory storage: envelope, GET and form POST, error
types and statuses, tenants through tally.auth.KeyRing, extra routes."""

import asyncio

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tally.api.app import ENGINE, make_app
from tally.auth import KeyRing
from tally.config import TallyConfig
from tally.query.engine import QueryEngine
from tally.query.storage import MemoryStorage

T0 = 1_700_002_800_000
MIN = 60_000


def storage():
    st = MemoryStorage()
    for i in range(10):
        st.add("acme", "cpu", {"host": "a"}, "1m", T0 + i * MIN, value=i)
        st.add("acme", "cpu", {"host": "b"}, "1m", T0 + i * MIN, value=10 + i)
    st.add("beta", "cpu", {"host": "z"}, "1m", T0, value=42)
    return st


def run(calls, keyring=None, extra_routes=()):
    cfg = TallyConfig()
    engine = QueryEngine(cfg, storage=storage(), clock=lambda: (T0 + 3_600_000) / 1000)

    async def go():
        app = make_app(cfg, engine, extra_routes=extra_routes, keyring=keyring)
        async with TestClient(TestServer(app)) as client:
            return await calls(client)

    return asyncio.run(go())


def test_instant_and_range_queries_get_and_post():
    async def calls(c):
        h = {"X-Scope-OrgID": "acme"}
        r1 = await c.post("/api/v1/query", data={"query": "1+1", "time": "1700000000"})
        r2 = await c.get("/api/v1/query", params={"query": "sum(cpu)", "time": str((T0 + 9 * MIN) / 1000),
                                                  "tier": "1m"}, headers=h)
        r3 = await c.post("/api/v1/query_range", data={"query": "cpu", "start": str(T0 / 1000),
                                                       "end": str((T0 + 9 * MIN) / 1000), "step": "1m"}, headers=h)
        return [(r.status, await r.json()) for r in (r1, r2, r3)]

    (s1, j1), (s2, j2), (s3, j3) = run(calls)
    assert s1 == 200 and j1 == {"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "2.0"],
                                                              "tier": "1s"}}
    assert s2 == 200 and j2["data"]["resultType"] == "vector"
    assert j2["data"]["result"] == [{"metric": {}, "value": [(T0 + 9 * MIN) // 1000, "28.0"]}]
    assert s3 == 200 and j3["data"]["resultType"] == "matrix" and j3["data"]["tier"] == "1m"
    a = next(r for r in j3["data"]["result"] if r["metric"] == {"__name__": "cpu", "host": "a"})
    assert a["values"] == [[T0 // 1000 + 60 * i, f"{float(i)}"] for i in range(10)]


def test_errors_use_prometheus_types_and_statuses():
    async def calls(c):
        out = []
        for method, path, data in [
            ("get", "/api/v1/query", {"query": "irate(cpu[5m])"}),
            ("get", "/api/v1/query", {"query": "sum("}),
            ("get", "/api/v1/query", {}),
            ("get", "/api/v1/query", {"query": "cpu", "time": "yesterday"}),
            ("post", "/api/v1/query_range", {"query": "cpu", "start": "10", "end": "5", "step": "1"}),
            ("get", "/api/v1/query_range", {"query": "cpu", "start": "0", "end": "100000", "step": "1"}),
            ("get", "/api/v1/query_range", {"query": "cpu", "start": "0", "end": "10", "step": "-1"}),
            ("get", "/api/v1/query", {"query": "cpu + on(nothing) cpu", "tier": "1m",
                                      "time": str((T0 + MIN) / 1000)}),
            ("get", "/api/v1/query", {"query": "cpu", "tier": "5m"}),
            ("get", "/api/v1/series", {}),
        ]:
            r = await getattr(c, method)(path, **({"params": data} if method == "get" else {"data": data}),
                                         headers={"X-Scope-OrgID": "acme"})
            out.append((r.status, await r.json()))
        return out

    results = run(calls)
    expected = [
        (400, "bad_data", "unsupported function 'irate'"),
        (400, "bad_data", "expected an expression"),
        (400, "bad_data", '"query": missing'),
        (400, "bad_data", 'cannot parse "yesterday" to a valid timestamp'),
        (400, "bad_data", "end timestamp must not be before start time"),
        (400, "bad_data", "exceeded maximum resolution of 11000 points"),
        (400, "bad_data", "zero or negative query resolution step"),
        (422, "execution", "many-to-many matching not allowed"),
        (400, "bad_data", "unknown tier '5m'"),
        (400, "bad_data", "no match[] parameter provided"),
    ]
    for (status, body), (want_status, want_type, fragment) in zip(results, expected):
        assert (status, body["status"], body["errorType"]) == (want_status, "error", want_type), body
        assert fragment in body["error"]


def test_metadata_labels_series_buildinfo():
    async def calls(c):
        h = {"X-Scope-OrgID": "acme"}
        out = {}
        for path, params in [("/api/v1/labels", {}), ("/api/v1/label/host/values", {}),
                             ("/api/v1/label/__name__/values", {}), ("/api/v1/series", {"match[]": "cpu"}),
                             ("/api/v1/metadata", {}), ("/api/v1/status/buildinfo", {})]:
            r = await c.get(path, params=params, headers=h)
            assert r.status == 200
            out[path] = (await r.json())["data"]
        return out

    data = run(calls)
    assert data["/api/v1/labels"] == ["__name__", "host"]
    assert data["/api/v1/label/host/values"] == ["a", "b"]
    assert data["/api/v1/label/__name__/values"] == ["cpu"]
    assert sorted(d["host"] for d in data["/api/v1/series"]) == ["a", "b"]
    assert data["/api/v1/metadata"] == {"cpu": [{"type": "gauge", "help": "", "unit": ""}]}
    assert data["/api/v1/status/buildinfo"]["version"].startswith("2.")


def test_tenants_and_keys_through_keyring():
    keyring = KeyRing.from_dict({"keys": [
        {"key": "acme-reader-key", "name": "acme", "tenant": "acme", "permissions": ["read"]},
        {"key": "beta-writer-key", "name": "beta-w", "tenant": "beta", "permissions": ["write"]},
    ]})

    async def calls(c):
        q = {"query": "sum(cpu)", "time": str(T0 / 1000), "tier": "1m"}
        out = []
        for headers in [{}, {"Authorization": "Bearer wrong-key-123"},
                        {"Authorization": "Bearer acme-reader-key"},
                        {"Authorization": "Bearer acme-reader-key", "X-Scope-OrgID": "beta"},
                        {"Authorization": "Bearer beta-writer-key"}]:
            r = await c.get("/api/v1/query", params=q, headers=headers)
            out.append((r.status, await r.json()))
        return out

    (s0, _), (s1, _), (s2, ok), (s3, other), (s4, writer) = run(calls, keyring)
    assert (s0, s1) == (401, 401)
    assert s2 == 200 and ok["data"]["result"][0]["value"][1] == "10.0"  # acme only: 0 + 10
    assert s3 == 403 and "may not read tenant 'beta'" in other["error"]
    assert s4 == 403 and "may not read" in writer["error"]


def test_extra_routes_are_mounted_with_the_engine():
    async def hello(request):
        return web.json_response({"engine": type(request.app[ENGINE]).__name__})

    async def calls(c):
        r = await c.get("/hello")
        return await r.json()

    assert run(calls, extra_routes=[web.get("/hello", hello)]) == {"engine": "QueryEngine"}


def test_repeated_closed_range_query_is_served_from_cache():
    async def calls(c):
        params = {"query": "avg(cpu)", "start": str(T0 / 1000), "end": str((T0 + 9 * MIN) / 1000), "step": "60"}
        first = await (await c.get("/api/v1/query_range", params=params, headers={"X-Scope-OrgID": "acme"})).read()
        second = await (await c.get("/api/v1/query_range", params=params, headers={"X-Scope-OrgID": "acme"})).read()
        other = await (await c.get("/api/v1/query_range", params=params, headers={"X-Scope-OrgID": "beta"})).read()
        return first, second, other

    first, second, other = run(calls)
    assert first == second
    assert orjson.loads(other)["data"]["result"][0]["values"][0][1] == "42.0"  # never another tenant's cache


def test_matrix_encoding_skips_missing_steps_and_writes_inf():
    import numpy as np

    from tally.api.encode import encode_result
    from tally.query.engine import QueryResult

    times = np.array([1_000, 2_500, 4_000], dtype=np.int64)
    data = np.array([[1.5, np.nan, np.inf], [np.nan, np.nan, np.nan], [0.1, 2.0, -np.inf]])
    res = QueryResult("matrix", times, [(("a", "x"),), (("a", "y"),), ()], data, "1s")
    doc = orjson.loads(encode_result(res))
    assert doc == {"resultType": "matrix", "tier": "1s", "result": [
        {"metric": {"a": "x"}, "values": [[1, "1.5"], [4, "+Inf"]]},
        {"metric": {}, "values": [[1, "0.1"], [2.5, "2.0"], [4, "-Inf"]]}]}


def test_tune_memory_turns_numpy_huge_pages_off_and_keeps_freed_memory():
    import numpy as np

    from tally.api.app import tune_memory

    get = np.core.multiarray._get_madvise_hugepage
    before = np.core.multiarray._set_madvise_hugepage(True)
    try:
        done = tune_memory()
        assert "numpy huge pages off" in done and not get()
        assert "glibc keeps freed memory" in done  # this machine's Python links glibc
    finally:
        np.core.multiarray._set_madvise_hugepage(before)


def test_open_range_is_served_again_until_its_tier_is_written():
    """A range with open steps is answered from the previous response while the tier's
    write counter is unchanged; a write (here a late bucket within grace) shows at once."""
    st = storage()
    cfg = TallyConfig()
    now_s = (T0 + 10 * MIN) / 1000  # the newest buckets are open (grace + settle)
    engine = QueryEngine(cfg, storage=st, clock=lambda: now_s)
    reads = []
    orig = st.buckets

    async def counting(*a, **k):
        reads.append(a[3:5])
        return await orig(*a, **k)

    st.buckets = counting
    params = {"query": "sum(cpu)", "start": str(T0 / 1000), "end": str((T0 + 9 * MIN) / 1000), "step": "60"}
    headers = {"X-Scope-OrgID": "acme"}

    async def go():
        app = make_app(cfg, engine)
        async with TestClient(TestServer(app)) as c:
            first = await (await c.get("/api/v1/query_range", params=params, headers=headers)).read()
            n_first = len(reads)
            second = await (await c.get("/api/v1/query_range", params=params, headers=headers)).read()
            n_second = len(reads)
            st.add("acme", "cpu", {"host": "a"}, "1m", T0 + 9 * MIN, value=100)  # bumps the 1m counter
            third = await (await c.get("/api/v1/query_range", params=params, headers=headers)).read()
            other_tier = await (await c.get("/api/v1/query_range", params={**params, "tier": "1m"},
                                            headers=headers)).read()
            return first, second, third, other_tier, n_first, n_second

    first, second, third, _, n_first, n_second = asyncio.run(go())
    assert n_first > 0 and n_second == n_first  # served again without reading a bucket
    assert second == first
    last = lambda body: orjson.loads(body)["data"]["result"][0]["values"][-1]  # noqa: E731
    assert last(first)[1] == str(9.0 + 19.0) and last(third)[1] == str(100.0 + 19.0)
