"""WebSocket robots written from the README's "Robot WebSocket channel" section alone, against
one node or every node of a cluster: several uploads in a row worked by robots spread over the
nodes, a robot that misbehaves (garbage, unknown types, another robot's item, a stale lease, an
oversized frame), one that vanishes holding items, then the cluster at rest (every robot's load,
as each node shows it, equals the items the store shows ASSIGNED or STARTED; nothing stays
PENDING while a robot has room).

    python3 ops/scripts/readme_ws_client.py ADMIN_PASSWORD http://127.0.0.1:8001 [http://...]

Needs `aiohttp`."""
import asyncio, json, sys, time
import aiohttp

PW = sys.argv[1]
BASES = sys.argv[2:]
RUN = f"{time.time():.0f}"


async def api(http, base, method, path, token, **kw):
    async with http.request(method, f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, **kw) as r:
        body = await r.json(content_type=None)
        assert r.status < 300, (method, path, r.status, body)
        return body


async def robot(http, base, token, stop, done, hold=False):
    """Says ready, starts and completes every item pushed, until `stop` is set. With `hold`,
    keeps the items pushed and drops the connection without a word after a second."""
    url = base.replace("http", "ws", 1) + "/api/v1/robot/ws"
    async with http.ws_connect(url, headers={"Authorization": f"Token {token}"}) as ws:
        await ws.send_json({"type": "ready", "ref": "ready"})
        held = []
        started = time.monotonic()
        while not stop.is_set():
            if hold and held and time.monotonic() - started > 1:
                return held  # gone without a close frame's courtesy
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.2)
            except asyncio.TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return held
                continue
            frame = json.loads(msg.data)
            if frame["type"] == "items":
                for it in frame["items"]:
                    if hold:
                        held.append(it["id"])
                        continue
                    await ws.send_json({"type": "started", "item_id": it["id"], "lease_id": it["lease_id"]})
                    await ws.send_json({"type": "completed", "item_id": it["id"], "lease_id": it["lease_id"],
                                        "observation": "ok", "output": {"robot": token[:6]}, "ref": it["id"]})
            elif frame["type"] == "ack" and isinstance(frame.get("ref"), int):
                done.append(frame["ref"])
            elif frame["type"] == "error":
                print("unexpected error frame", frame)
        return held


def deep(levels):
    out = 1
    for _ in range(levels):
        out = {"a": out}
    return out


async def misbehave(http, base, token, victim):
    """Frames a careless robot sends; each must get an error frame (or, for the oversized frame,
    the connection closed) and change nothing."""
    url = base.replace("http", "ws", 1) + "/api/v1/robot/ws"
    seen = []
    async with http.ws_connect(url, headers={"Authorization": f"Token {token}"}, max_msg_size=0) as ws:
        for frame in ("not json", json.dumps({"type": "dance", "ref": 1}),
                      json.dumps({"type": "completed", "item_id": victim, "lease_id": "x", "ref": 2}),
                      json.dumps({"type": "started", "item_id": 10**12, "lease_id": "x", "ref": 3}),
                      json.dumps({"type": "completed", "item_id": victim, "lease_id": "x",
                                  "output": deep(60), "ref": 4})):
            await ws.send_str(frame)
            msg = await asyncio.wait_for(ws.receive(), 5)
            seen.append(json.loads(msg.data).get("code") if msg.type == aiohttp.WSMsgType.TEXT else str(msg.type))
        await ws.send_str("x" * (2 << 20))
        msg = await asyncio.wait_for(ws.receive(), 5)
        seen.append(str(msg.type))
    return seen


async def main():
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{BASES[0]}/api/v1/auth/login", json={"username": "admin", "password": PW}) as r:
            admin = (await r.json())["token"]
        proc = (await api(http, BASES[0], "POST", "/api/v1/processes", admin, json={"title": f"ws stranger {RUN}"}))["id"]
        robots = []
        for i in range(6):
            r = await api(http, BASES[i % len(BASES)], "POST", "/api/v1/robots", admin,
                          json={"name": f"ws-{RUN}-{i}", "capacity": 4, "processes": [proc]})
            robots.append((r["id"], r["token"], BASES[i % len(BASES)]))
        stop = asyncio.Event()
        done = []
        workers = [asyncio.create_task(robot(http, base, tok, stop, done)) for _, tok, base in robots[:5]]
        # Uploads in a row, each on the next node.
        tasks = []
        for n in range(5):
            csv = "linea,valor,field_name\n" + "".join(f"{i},{i * 7},ws\n" for i in range(1, 801))
            base = BASES[n % len(BASES)]
            async with http.post(f"{base}/api/v1/tasks?process_id={proc}", data=csv,
                                 headers={"Authorization": f"Bearer {admin}", "Content-Type": "text/csv"}) as r:
                task = await r.json()
                assert r.status == 201, task
            tasks.append(task["id"])
            while (await api(http, base, "GET", f"/api/v1/tasks/{task['id']}", admin))["status"] != "COMPLETED":
                await asyncio.sleep(0.1)
            print(f"task {task['id']} completed via {base}")
        assert len(done) == len(set(done)) == 4000, (len(done), len(set(done)))
        # A robot that vanishes holding items; its items must come back and be worked.
        vanishing = asyncio.create_task(robot(http, robots[5][2], robots[5][1], stop, done, hold=True))
        await asyncio.sleep(0.5)
        csv = "a\n" + "".join(f"{i}\n" for i in range(40))
        async with http.post(f"{BASES[-1]}/api/v1/tasks?process_id={proc}", data=csv,
                             headers={"Authorization": f"Bearer {admin}", "Content-Type": "text/csv"}) as r:
            last = (await r.json())["id"]
        held = await vanishing
        print("vanishing robot held", len(held), "items")
        items = (await api(http, BASES[0], "GET", f"/api/v1/tasks/{last}/items?limit=1", admin))["items"]
        print("misbehaving robot got", await misbehave(http, BASES[0], robots[0][1], items[0]["id"]))
        t0 = time.time()
        while (await api(http, BASES[0], "GET", f"/api/v1/tasks/{last}", admin))["status"] != "COMPLETED":
            assert time.time() - t0 < 120, "the vanished robot's items never came back"
            await asyncio.sleep(0.5)
        print(f"task {last} completed {time.time() - t0:.1f} s after the robot vanished")
        await asyncio.sleep(2)
        # At rest: every node shows the same loads, and they add up to what the store holds.
        for base in BASES:
            loads = {r["id"]: r["load"] for r in await api(http, base, "GET", "/api/v1/robots", admin, params={"limit": "1000"})
                     if r["id"] in {rid for rid, _, _ in robots}}
            held = sum(t["counts"]["assigned"] + t["counts"]["started"]
                       for t in (await api(http, base, "GET", "/api/v1/tasks?limit=100", admin))["tasks"]
                       if t["id"] in tasks + [last])
            print(base, "loads", sorted(loads.values()), "held in the store", held)
            assert sum(loads.values()) == held == 0, "a node at rest must show no load"
            print(base, "health", await (await http.get(f"{base}/healthz")).json())
        stop.set()
        await asyncio.gather(*workers)


asyncio.run(main())
