#!/usr/bin/env python3
"""Chaotic soak client for an Orchestrator RPA node, written from the README alone.

Starts a node (or uses --node-url), creates a process (on_lost = --on-lost, default retry),
N WebSocket robots and N REST v1 robots with capacity 2-5, uploads CSVs over the first half of the
run, and lets the fleet work items with random delays, application/business failures and crashes
(a robot drops its connection or stops calling while holding items, then comes back with the same
token). At the end the fleet vanishes, the node is left to come to rest, and the checks are
printed as a table. Exit status 1 if any check fails.

  pip install aiohttp websockets
  python3 ops/scripts/soak.py --binary target/release/orchestrator
"""

import argparse
import asyncio
import collections
import json
import os
import random
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import time

import aiohttp
import websockets
from websockets.asyncio.client import connect as ws_connect

RETRYABLE_WS = {"unavailable", "store_unavailable"}


EVENTS = None  # file of robot events (connect, crash, ...) for matching with the node log


def event(robot, what):
    if EVENTS:
        EVENTS.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.{int(time.time() * 1000) % 1000:03d}Z robot_id={robot} {what}\n")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Stats:
    def __init__(self):
        self.c = collections.Counter()  # free-form counters
        self.http_5xx = collections.Counter()  # "METHOD path-kind status" -> n
        self.acked = collections.defaultdict(set)  # item id -> robot ids whose completion was acked
        self.ack_total = 0
        self.error_codes = collections.Counter()
        self.close_codes = collections.Counter()
        self.samples = []  # (t, rss_kb, fds)
        self.anomalies = []  # (time, text)
        self.rest_first_item = {}  # "short"/"long" crash -> [seconds from return to first item]

    def anomaly(self, text):
        if len(self.anomalies) < 200:
            self.anomalies.append((time.strftime("%H:%M:%S"), text))
        self.c["anomalies"] += 1

    def completed_ack(self, item_id, robot_id):
        self.ack_total += 1
        self.acked[item_id].add(robot_id)


S = Stats()
STOP = asyncio.Event()


def path_kind(path):
    return re.sub(r"/\d+", "/{id}", path.split("?")[0])


async def http(session, method, url, *, retry_unavailable=True, max_retry_s=30.0, **kw):
    """One request; 503/429 are retried after a short pause (Retry-After honoured). Returns (status, json|text)."""
    deadline = time.monotonic() + max_retry_s
    pause = 0.5
    while True:
        async with session.request(method, url, **kw) as r:
            body = await r.read()
            status = r.status
            retry_after = r.headers.get("Retry-After")
        if status >= 500:
            S.http_5xx[f"{method} {path_kind(url.split('//', 1)[1].split('/', 1)[1])} {status}"] += 1
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = body.decode(errors="replace")
        if status in (503, 429) and retry_unavailable and time.monotonic() < deadline and not STOP.is_set():
            S.c[f"http_{status}_retried"] += 1
            wait = pause
            if retry_after:
                try:
                    wait = min(float(retry_after), 5.0)
                except ValueError:
                    pass
            await asyncio.sleep(wait * (1 + random.random() * 0.5))
            continue
        return status, data


def err_code(data):
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"].get("code")
    return None


# --------------------------------------------------------------------------- robots


class Behaviour:
    def __init__(self, a):
        self.a = a

    def work_time(self):
        return random.uniform(self.a.work_min, self.a.work_max)

    def crash(self):
        return random.random() < self.a.crash_rate

    def crash_pause(self):
        return random.uniform(self.a.crash_min, self.a.crash_max)

    def outcome(self):
        r = random.random()
        if r < self.a.app_fail_rate:
            return "application"
        if r < self.a.app_fail_rate + self.a.biz_fail_rate:
            return "business"
        return "ok"


class WsRobot:
    def __init__(self, base, rid, token, capacity, beh):
        self.ws_url = base.replace("http://", "ws://").replace("https://", "wss://") + "/api/v1/robot/ws"
        self.id, self.token, self.capacity, self.beh = rid, token, capacity, beh
        self.conn = None
        self.workers = {}  # item id -> asyncio.Task
        self.reported = set()  # item ids whose final report was sent (no longer in the window)
        self.pending = {}  # ref -> future
        self.ref = 0
        self.crash_req = False
        self.refusals = 0
        self.held_at_drop = set()

    async def run(self):
        while not STOP.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a client bug must not silently remove a robot
                S.anomaly(f"ws robot {self.id}: client exception {type(e).__name__}: {e}")
                await asyncio.sleep(1)

    async def run_once(self):
        while not STOP.is_set():
            try:
                async with ws_connect(
                    self.ws_url,
                    additional_headers={"Authorization": f"Token {self.token}"},
                    proxy=None,
                    ping_interval=None,  # the node pings; our pongs are the pulses
                    max_size=8 << 20,
                    open_timeout=30,
                    close_timeout=2,
                    compression=None,
                ) as conn:
                    self.refusals = 0
                    self.conn = conn
                    S.c["ws_connects"] += 1
                    event(self.id, "ws connected")
                    await conn.send(json.dumps({"type": "ready", "ref": "ready"}))
                    await self.read_loop(conn)
            except websockets.exceptions.InvalidStatus as e:
                st = e.response.status_code
                if st >= 500:
                    S.http_5xx[f"GET /api/v1/robot/ws {st}"] += 1
                S.c[f"ws_upgrade_refused_{st}"] += 1
                if st in (503, 429):
                    await self.backoff()
                    continue
                S.anomaly(f"ws robot {self.id}: upgrade refused {st}")
                await asyncio.sleep(2)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
                S.c["ws_connect_failed"] += 1
                if not STOP.is_set():
                    S.anomaly(f"ws robot {self.id}: connect failed {type(e).__name__}: {e}")
                await self.backoff()
                continue
            finally:
                self.conn = None
                self.held_at_drop = set(self.workers) - self.reported
                self.drop_work()
            if STOP.is_set():
                return
            if self.crash_req:
                self.crash_req = False
                S.c["ws_crashes"] += 1
                await asyncio.sleep(self.beh.crash_pause())
            else:
                await asyncio.sleep(random.uniform(0.1, 0.6))

    async def backoff(self):
        self.refusals += 1
        d = min(0.25 * 2 ** (self.refusals - 1), 8.0)
        await asyncio.sleep(d * (1 + random.random() * 0.5))

    def drop_work(self):
        for t in self.workers.values():
            t.cancel()
        self.workers.clear()
        self.reported.clear()
        for f in self.pending.values():
            f.cancel()
        self.pending.clear()

    async def read_loop(self, conn):
        try:
            async for raw in conn:
                S.c["ws_frames_in"] += 1
                try:
                    fr = json.loads(raw)
                except ValueError:
                    S.anomaly(f"ws robot {self.id}: non-JSON frame {raw[:200]!r}")
                    continue
                t = fr.get("type")
                if t == "items":
                    for it in fr.get("items", []):
                        iid = it["id"]
                        if iid in self.workers:
                            S.c["ws_item_pushed_twice"] += 1
                            S.anomaly(f"ws robot {self.id}: item {iid} pushed while already held")
                            continue
                        if len(self.workers) - len(self.reported & self.workers.keys()) >= self.capacity:
                            S.c["ws_over_window"] += 1
                            S.anomaly(f"ws robot {self.id}: pushed item {iid} beyond capacity {self.capacity} (holds {len(self.workers)})")
                        S.c["ws_items_received"] += 1
                        if iid in self.held_at_drop:
                            S.c["ws_items_pushed_again_after_reconnect"] += 1
                            self.held_at_drop.discard(iid)
                        self.workers[iid] = asyncio.create_task(self.work(conn, it))
                elif t == "revoke":
                    for iid in fr.get("item_ids", []):
                        S.c["ws_revoked"] += 1
                        w = self.workers.pop(iid, None)
                        if w:
                            w.cancel()
                elif t in ("ack", "error"):
                    ref = fr.get("ref")
                    if t == "error":
                        S.error_codes["ws:" + str(fr.get("code"))] += 1
                    if ref == "ready":
                        if t == "error":
                            S.anomaly(f"ws robot {self.id}: ready refused {fr}")
                        continue
                    f = self.pending.pop(ref, None)
                    if f and not f.done():
                        f.set_result(fr)
                    elif t == "error":
                        S.anomaly(f"ws robot {self.id}: error frame without a waiting ref: {fr}")
                else:
                    S.anomaly(f"ws robot {self.id}: unknown frame {fr}")
        except websockets.exceptions.ConnectionClosed as e:
            pass
        rcvd = conn.protocol.close_rcvd
        code = rcvd.code if rcvd else None
        if not self.crash_req and not STOP.is_set():
            S.close_codes[str(code)] += 1
            event(self.id, f"ws closed by node: {code}")
            if code == 1013:
                self.refusals += 1
            if code not in (1000, 1001, 1012, 1013):
                S.anomaly(f"ws robot {self.id}: connection ended, close code {code} ({rcvd.reason if rcvd else 'no close frame'})")

    async def request(self, conn, frame):
        """Send a frame and wait for its ack/error; retry `unavailable` every 0.5 s for up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            self.ref += 1
            ref = self.ref
            fut = asyncio.get_running_loop().create_future()
            self.pending[ref] = fut
            await conn.send(json.dumps({**frame, "ref": ref}))
            try:
                fr = await asyncio.wait_for(fut, 60)
            except asyncio.TimeoutError:
                self.pending.pop(ref, None)
                S.anomaly(f"ws robot {self.id}: no ack in 60 s for {frame['type']} item {frame.get('item_id')}")
                return None
            if fr["type"] == "error" and fr.get("code") in RETRYABLE_WS and time.monotonic() < deadline:
                S.c["ws_unavailable_retried"] += 1
                await asyncio.sleep(0.5)
                continue
            return fr

    async def work(self, conn, it):
        iid = it["id"]
        lease = {"item_id": iid, "lease_id": it["lease_id"]}
        try:
            if it.get("status") != "STARTED":
                fr = await self.request(conn, {"type": "started", **lease})
                if fr is None or fr["type"] == "error":
                    S.c[f"ws_start_refused_{fr and fr.get('code')}"] += 1
                    return
            await asyncio.sleep(self.beh.work_time())
            if self.beh.crash():
                self.crash_req = True
                S.c["ws_crash_with_items"] += len(self.workers)
                if random.random() < 0.7:
                    event(self.id, f"ws crash: TCP abort holding {len(self.workers)}")
                    conn.transport.abort()
                else:
                    event(self.id, f"ws crash: close frame holding {len(self.workers)}")
                    await conn.close()
                return
            kind = self.beh.outcome()
            if kind == "ok":
                frame = {"type": "completed", **lease, "observation": "ok", "output": {"robot": self.id, "n": random.randint(0, 99)}}
            else:
                frame = {"type": "failed", **lease, "kind": kind, "message": f"soak {kind} failure"}
            self.reported.add(iid)
            fr = await self.request(conn, frame)
            if fr is None:
                return
            if fr["type"] == "ack":
                st = (fr.get("item") or {}).get("status")
                if kind == "ok":
                    if st == "COMPLETED":
                        S.completed_ack(iid, self.id)
                    else:
                        S.anomaly(f"ws robot {self.id}: completed item {iid} acked with status {st}: {fr}")
                else:
                    S.c[f"failed_{kind}_acked"] += 1
            else:
                S.c[f"ws_report_refused_{fr.get('code')}"] += 1
        except (websockets.exceptions.ConnectionClosed, ConnectionError):
            pass
        finally:
            if self.workers.get(iid) is asyncio.current_task() and not self.crash_req:
                del self.workers[iid]
                self.reported.discard(iid)


class RestRobot:
    def __init__(self, base, rid, token, capacity, beh, claim_wait):
        self.api = base + "/api/v1/robot"
        self.id, self.token, self.capacity, self.beh = rid, token, capacity, beh
        self.claim_wait = claim_wait
        self.workers = {}
        self.session = None
        self.crash_req = False
        self.wake = asyncio.Event()
        self.held_at_crash = {}
        self.leases = {}  # item id -> lease id of the items this robot process holds
        self.back_at = None
        self.crash_pause = 0.0

    def new_session(self):
        return aiohttp.ClientSession(
            headers={"Authorization": f"Token {self.token}"},
            timeout=aiohttp.ClientTimeout(total=self.claim_wait + 60),
            connector=aiohttp.TCPConnector(limit=16, force_close=False),
        )

    async def pulse(self, status=None):
        st, data = await http(self.session, "POST", f"{self.api}/pulse", json={"status": status} if status else {})
        if st != 200:
            S.anomaly(f"rest robot {self.id}: pulse answered {st} {data}")
            return None
        return data

    async def run(self):
        while not STOP.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                S.anomaly(f"rest robot {self.id}: client exception {type(e).__name__}: {e}")
                await asyncio.sleep(1)

    async def run_once(self):
        while not STOP.is_set():
            self.session = self.new_session()
            try:
                p = await self.pulse("ACTIVE")
                last_pulse = time.monotonic()
                pulse_every = (p or {}).get("pulse_interval_ms", 1000) / 1000.0
                self.pulse_timeout = (p or {}).get("pulse_timeout_ms", 5000) / 1000.0
                while not STOP.is_set() and not self.crash_req:
                    room = self.capacity - len(self.workers)
                    if room > 0:
                        wait = max(1, int(min(self.claim_wait, pulse_every)))
                        st, data = await http(self.session, "POST", f"{self.api}/items/claim?max={room}&wait={wait}")
                        last_pulse = time.monotonic()
                        if st != 200:
                            S.anomaly(f"rest robot {self.id}: claim answered {st} {data}")
                            await asyncio.sleep(1)
                            continue
                        S.c["rest_claims"] += 1
                        if not data:
                            S.c["rest_claims_empty"] += 1
                        if len(data) > room:
                            S.anomaly(f"rest robot {self.id}: claim max={room} returned {len(data)} items")
                        for it in data:
                            iid = it["id"]
                            if iid in self.workers:
                                S.c["rest_item_claimed_twice"] += 1
                                S.anomaly(f"rest robot {self.id}: item {iid} claimed while already held")
                                continue
                            S.c["rest_items_received"] += 1
                            if iid in self.held_at_crash:
                                kind = "short" if self.crash_pause < self.pulse_timeout else "long"
                                same = self.held_at_crash[iid] == it["lease_id"]
                                S.c[f"rest_items_claimed_again_after_{kind}_crash_{'same' if same else 'new'}_lease"] += 1
                            if self.back_at is not None:
                                key = "short" if self.crash_pause < self.pulse_timeout else "long"
                                S.rest_first_item.setdefault(key, []).append(time.monotonic() - self.back_at)
                                self.back_at = None
                            self.leases[iid] = it["lease_id"]
                            self.workers[iid] = asyncio.create_task(self.work(it))
                    else:
                        self.wake.clear()
                        try:
                            await asyncio.wait_for(self.wake.wait(), max(0.2, pulse_every - (time.monotonic() - last_pulse)))
                        except asyncio.TimeoutError:
                            pass
                        if time.monotonic() - last_pulse >= pulse_every and not self.crash_req:
                            p = await self.pulse()
                            last_pulse = time.monotonic()
                            if p and p.get("status") != "ACTIVE":
                                S.anomaly(f"rest robot {self.id}: pulse says status {p.get('status')} while working")
                                await self.pulse("ACTIVE")
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError) as e:
                if not STOP.is_set() and not self.crash_req:
                    S.anomaly(f"rest robot {self.id}: {type(e).__name__}: {e}")
                    await asyncio.sleep(1)
            finally:
                if self.crash_req:
                    self.held_at_crash = dict(self.leases)
                for t in self.workers.values():
                    t.cancel()
                self.workers.clear()
                self.leases.clear()
                await self.session.close()  # drops every connection, parked claim included
            if self.crash_req and not STOP.is_set():
                self.crash_req = False
                S.c["rest_crashes"] += 1
                self.crash_pause = self.beh.crash_pause()
                await asyncio.sleep(self.crash_pause)
                self.back_at = time.monotonic()

    async def work(self, it):
        iid = it["id"]
        lease = {"lease_id": it["lease_id"]}
        try:
            if it.get("status") != "STARTED":
                st, data = await http(self.session, "POST", f"{self.api}/items/{iid}/start", json=lease)
                if st != 200:
                    S.c[f"rest_start_refused_{st}_{err_code(data)}"] += 1
                    return
            await asyncio.sleep(self.beh.work_time())
            if self.beh.crash():
                S.c["rest_crash_with_items"] += len(self.workers)
                event(self.id, f"rest crash holding {len(self.workers)}")
                self.crash_req = True
                self.wake.set()
                # cancel the parked claim and every other request at once: the robot just stops
                asyncio.get_running_loop().call_soon(lambda s=self.session: asyncio.ensure_future(s.close()))
                return
            kind = self.beh.outcome()
            if kind == "ok":
                body = {**lease, "observation": "ok", "output": {"robot": self.id}}
                st, data = await http(self.session, "POST", f"{self.api}/items/{iid}/complete", json=body)
            else:
                body = {**lease, "kind": kind, "message": f"soak {kind} failure"}
                st, data = await http(self.session, "POST", f"{self.api}/items/{iid}/fail", json=body)
            if st == 200:
                if kind == "ok":
                    if isinstance(data, dict) and data.get("status") == "COMPLETED":
                        S.completed_ack(iid, self.id)
                    else:
                        S.anomaly(f"rest robot {self.id}: complete of {iid} answered 200 {data}")
                else:
                    S.c[f"failed_{kind}_acked"] += 1
            else:
                S.c[f"rest_report_refused_{st}_{err_code(data)}"] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
            pass  # session closed under us (crash) or connection dropped
        finally:
            if self.workers.get(iid) is asyncio.current_task() and not self.crash_req:
                del self.workers[iid]
                self.leases.pop(iid, None)
            self.wake.set()


# --------------------------------------------------------------------------- node and admin


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_sample(pid):
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except (OSError, StopIteration):
        return None


async def sampler(pid):
    while True:
        s = proc_sample(pid)
        if s:
            S.samples.append((time.monotonic(), *s))
        await asyncio.sleep(1)


def csv_body(rows, tag):
    out = ["n,name,amount,note"]
    for i in range(rows):
        out.append(f'{i},{tag}-{i},{random.randint(1, 100000) / 100:.2f},"soak, row {i}"')
    return ("\n".join(out) + "\n").encode()


async def main_async(a):
    random.seed(a.seed)
    os.makedirs(a.scratch, exist_ok=True)
    proc = None
    pid = a.node_pid
    logpath = None
    password = a.admin_password
    if a.node_url:
        base = a.node_url.rstrip("/")
        if not password:
            sys.exit("--admin-password is needed with --node-url")
    else:
        password = password or "".join(random.choice(string.ascii_letters + string.digits) for _ in range(24))
        port = a.port or free_port()
        base = f"http://127.0.0.1:{port}"
        logpath = os.path.join(a.scratch, f"node-{int(time.time())}.log")
        global EVENTS
        EVENTS = open(logpath.replace("node-", "robots-"), "w", buffering=1)
        env = dict(os.environ, ORCH_ADMIN_PASSWORD=password)
        cmd = [a.binary, "serve", "--db", "mem://", "--listen", f"127.0.0.1:{port}",
               "--pulse-timeout", a.pulse_timeout, "--sweep-period", a.sweep_period, "--lease-ttl", a.lease_ttl]
        log("starting", " ".join(cmd), "log:", logpath)
        proc = subprocess.Popen(cmd, env=env, stdout=open(logpath, "wb"), stderr=subprocess.STDOUT)
        pid = proc.pid

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as anon:
        t0 = time.monotonic()
        while True:
            try:
                st, data = await http(anon, "GET", base + "/healthz", retry_unavailable=False)
                if st == 200:
                    break
            except aiohttp.ClientError:
                pass
            if proc and proc.poll() is not None:
                sys.exit(f"node exited with {proc.returncode}; see {logpath}")
            if time.monotonic() - t0 > 120:
                sys.exit("node not healthy after 120 s")
            await asyncio.sleep(0.5)
        log(f"node ready after {time.monotonic() - t0:.1f} s", data)
        start_sample = proc_sample(pid)
        st, data = await http(anon, "POST", base + "/api/v1/auth/login", json={"username": "admin", "password": password})
        assert st == 200, (st, data)
        jwt = data["token"]

    admin = aiohttp.ClientSession(headers={"Authorization": f"Bearer {jwt}"}, timeout=aiohttp.ClientTimeout(total=300))
    api = base + "/api/v1"
    st, proc_row = await http(admin, "POST", api + "/processes", json={
        "title": f"soak-{int(time.time())}", "description": "chaotic soak", "max_attempts": a.max_attempts, "on_lost": a.on_lost})
    assert st == 201, (st, proc_row)
    pid_proc = proc_row["id"]
    log("process", proc_row)

    beh = Behaviour(a)
    robots = []
    for i in range(a.ws_robots + a.rest_robots):
        kind = "ws" if i < a.ws_robots else "rest"
        cap = random.randint(2, 5)
        st, r = await http(admin, "POST", api + "/robots", json={
            "name": f"soak-{kind}-{i}", "platform": "PYTHON", "capacity": cap, "processes": [pid_proc]})
        assert st == 201, (st, r)
        robots.append(WsRobot(base, r["id"], r["token"], cap, beh) if kind == "ws"
                      else RestRobot(base, r["id"], r["token"], cap, beh, a.claim_wait))
    log(f"created {a.ws_robots} ws + {a.rest_robots} rest robots")

    samp = asyncio.create_task(sampler(pid))
    fleet = [asyncio.create_task(r.run()) for r in robots]
    await asyncio.sleep(2)

    tasks = []
    t_start = time.monotonic()

    async def uploader():
        span = a.duration / 2
        for k in range(a.uploads):
            at = t_start + k * span / a.uploads
            await asyncio.sleep(max(0, at - time.monotonic()))
            t = time.monotonic()
            st, task = await http(admin, "POST", f"{api}/tasks?process_id={pid_proc}",
                                  data=csv_body(a.rows, f"u{k}"), headers={"Content-Type": "text/csv"})
            if st != 201:
                S.anomaly(f"upload {k} answered {st} {task}")
                continue
            tasks.append(task["id"])
            log(f"upload {k}: task {task['id']} {task.get('item_count')} items in {time.monotonic() - t:.1f} s")

    async def progress():
        while True:
            await asyncio.sleep(a.progress_every)
            tot = collections.Counter()
            for tid in list(tasks):
                st, t = await http(admin, "GET", f"{api}/tasks/{tid}")
                if st == 200:
                    for k, v in norm_counts(t).items():
                        tot[k] += v
            smp = S.samples[-1] if S.samples else (0, 0, 0)
            rv = await list_robots(admin, api)
            tot["robot_load_sum"] = sum(r.get("load") or 0 for r in rv.values())
            tot["robots_connected"] = sum(1 for r in rv.values() if r.get("connected"))
            log(f"t={time.monotonic() - t_start:5.0f}s counts={dict(tot)} acks={S.ack_total} "
                f"rss={smp[1] // 1024}MB fds={smp[2]} 5xx={sum(S.http_5xx.values())} anomalies={S.c['anomalies']}")

    up = asyncio.create_task(uploader())
    prog = asyncio.create_task(progress())
    await asyncio.sleep(a.duration)
    log("stopping the fleet (robots vanish holding whatever they hold)")
    STOP.set()
    for r in robots:
        if isinstance(r, WsRobot) and r.conn is not None:
            r.conn.transport.abort()
    for f in fleet:
        f.cancel()
    await asyncio.gather(*fleet, return_exceptions=True)
    up.cancel()
    prog.cancel()
    t_stop = time.monotonic()

    # ------------------------------------------------------------------ rest
    limit = 2 * parse_dur(a.pulse_timeout) + parse_dur(a.lease_ttl) + 15
    log(f"waiting up to {limit:.0f} s for the node to come to rest")
    robots_view = {}
    task_view = {}
    while True:
        robots_view = await list_robots(admin, api)
        task_view = {}
        for tid in tasks:
            st, t = await http(admin, "GET", f"{api}/tasks/{tid}")
            task_view[tid] = t if st == 200 else None
        mine = {r.id for r in robots}
        busy = [r for r in robots_view.values() if r.get("id") in mine and (r.get("load") or r.get("connected"))]
        inflight = sum(norm_counts(t).get("assigned", 0) + norm_counts(t).get("started", 0) for t in task_view.values() if t)
        if not busy and not inflight:
            break
        if time.monotonic() - t_stop > limit:
            break
        await asyncio.sleep(1)
    rest_after = time.monotonic() - t_stop
    await asyncio.sleep(1)
    rest_sample = proc_sample(pid)
    st_h, healthz = await http(admin, "GET", base + "/healthz", retry_unavailable=False)

    # items as stored, to compare with what robots were told
    store_mismatch = []
    if a.verify_items:
        acked_ids = set(S.acked)
        for tid in tasks:
            off = 0
            while True:
                st, page = await http(admin, "GET", f"{api}/tasks/{tid}/items?status=COMPLETED&offset={off}&limit=1000")
                if st != 200:
                    store_mismatch.append(f"items page of task {tid} answered {st}")
                    break
                items = page.get("items", [])
                for it in items:
                    robs = S.acked.get(it["id"])
                    if robs and it.get("robot_id") not in robs:
                        store_mismatch.append(f"item {it['id']} COMPLETED by robot {it.get('robot_id')} in store, acked to {sorted(robs)}")
                    acked_ids.discard(it["id"])
                off += len(items)
                if not items or off >= page.get("total", 0):
                    break
        for iid in sorted(acked_ids)[:20]:
            store_mismatch.append(f"item {iid} acked COMPLETED but not COMPLETED in the store")
        if len(acked_ids) > 20:
            store_mismatch.append(f"... {len(acked_ids) - 20} more acked items not COMPLETED in the store")
    await admin.close()
    samp.cancel()

    # ------------------------------------------------------------------ node log
    drifted = errors = warns = 0
    warn_kinds = collections.Counter()
    if logpath:
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        with open(logpath, errors="replace") as f:
            for line in f:
                line = ansi.sub("", line)
                if "drifted" in line:
                    drifted += 1
                lvl = re.match(r"^\S+\s+(ERROR|WARN)\b", line)
                if lvl and lvl.group(1) == "ERROR":
                    errors += 1
                if lvl:
                    warns += lvl.group(1) == "WARN"
                    msg = re.sub(r"\d+", "N", line.split(lvl.group(1), 1)[1].strip())[:110]
                    warn_kinds[f"{lvl.group(1)} {msg}"] += 1

    # ------------------------------------------------------------------ checks
    rows = []  # (check, value, ok)

    def check(name, value, ok):
        rows.append((name, str(value), ok))

    total_items = 0
    agg = collections.Counter()
    for tid in tasks:
        t = task_view.get(tid)
        if not t:
            check(f"task {tid} readable", "no", False)
            continue
        c = norm_counts(t)
        total_items += t.get("item_count", 0)
        for k, v in c.items():
            agg[k] += v
        s = sum(c.get(k, 0) for k in ("pending", "assigned", "started", "completed", "failed", "abandoned"))
        check(f"task {tid} {t.get('status')}: p/a/s/c/f/ab = " + "/".join(str(c.get(k, 0)) for k in
              ("pending", "assigned", "started", "completed", "failed", "abandoned")) + f" sum={s}",
              f"items {t.get('item_count')}", s == t.get("item_count"))
    check("uploads accepted", f"{len(tasks)}/{a.uploads}", len(tasks) == a.uploads)
    check("items ASSIGNED or STARTED at rest", agg.get("assigned", 0) + agg.get("started", 0),
          agg.get("assigned", 0) + agg.get("started", 0) == 0)
    mine = {r.id for r in robots}
    loaded = [(r["id"], r.get("load")) for r in robots_view.values() if r.get("id") in mine and r.get("load") != 0]
    conn = [r["id"] for r in robots_view.values() if r.get("id") in mine and r.get("connected") is not False]
    missing = [i for i in mine if i not in robots_view]
    check("robots listed", f"{len(mine) - len(missing)}/{len(mine)}", not missing)
    check("robots with load != 0 at rest", f"{len(loaded)} {loaded[:8]}", not loaded)
    check("robots connected at rest", f"{len(conn)} {conn[:8]}", not conn)
    check("came to rest after (s)", f"{rest_after:.1f} (limit {limit:.0f})", rest_after <= limit)
    check("log lines 'drifted'", drifted if logpath else "n/a", drifted == 0)
    check("log lines at ERROR", errors if logpath else "n/a", errors == 0)
    check("HTTP 5xx seen by clients", f"{sum(S.http_5xx.values())} {dict(S.http_5xx)}", not S.http_5xx)
    check("/healthz", f"{st_h} {json.dumps(healthz)}", st_h == 200 and isinstance(healthz, dict) and healthz.get("status") == "ok")
    if S.samples:
        peak_rss = max(s[1] for s in S.samples)
        peak_fd = max(s[2] for s in S.samples)
        check("node RSS MB start/peak/rest", f"{start_sample[0] // 1024}/{peak_rss // 1024}/{rest_sample[0] // 1024}", True)
        check("node open fds start/peak/rest", f"{start_sample[1]}/{peak_fd}/{rest_sample[1]}",
              rest_sample[1] <= start_sample[1] + 10)
    twice = {i: sorted(r) for i, r in S.acked.items() if len(r) > 1}
    check("completions acked (total / distinct items)", f"{S.ack_total} / {len(S.acked)}", True)
    check("items acked COMPLETED to two robots", f"{len(twice)} {list(twice.items())[:5]}", not twice)
    check("store agrees with acked completions", f"{len(store_mismatch)} {store_mismatch[:3]}" if a.verify_items else "skipped",
          not store_mismatch)
    check("store COMPLETED >= distinct acked", f"{agg.get('completed', 0)} >= {len(S.acked)}", agg.get("completed", 0) >= len(S.acked))

    w = max(len(r[0]) for r in rows)
    print("\n" + "=" * 100)
    print(f"{'check'.ljust(w)} | {'ok':4} | value")
    print("-" * 100)
    for name, value, ok in rows:
        print(f"{name.ljust(w)} | {'ok' if ok else 'FAIL':4} | {value}")
    print("-" * 100)
    print("items in all tasks:", total_items, "by status:", dict(agg))
    print("counters:", json.dumps(dict(sorted(S.c.items()))))
    for k, v in sorted(S.rest_first_item.items()):
        v = sorted(v)
        print(f"REST robot back from a {k} crash (pause {'<' if k == 'short' else '>='} pulse timeout): first item after "
              f"median {v[len(v) // 2]:.1f} s, max {v[-1]:.1f} s (n={len(v)})")
    print("ws error codes:", dict(S.error_codes), "unexpected close codes:", dict(S.close_codes))
    if warn_kinds:
        print("node WARN/ERROR lines by kind:")
        for k, n in warn_kinds.most_common(15):
            print(f"  {n:6}  {k}")
    if S.anomalies:
        print(f"client anomalies ({S.c['anomalies']}, first {min(len(S.anomalies), 25)}):")
        for t, x in S.anomalies[:25]:
            print("  ", t, x[:300])
    if logpath:
        print("node log:", logpath)

    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
            print("node stopped with SIGTERM, exit status", rc)
            if rc != 0:
                rows.append(("node exit status", str(rc), False))
        except subprocess.TimeoutExpired:
            proc.kill()
            rows.append(("node stopped within 30 s of SIGTERM", "no", False))
            print("node did not stop within 30 s of SIGTERM; killed")
    failed = [r for r in rows if not r[2]]
    if failed:
        print("FAILED:", "; ".join(f"{n} ({v})" for n, v, _ in failed))
        return 1
    print("all checks passed")
    return 0


def norm_counts(t):
    c = (t or {}).get("counts") or {}
    return {str(k).lower(): v for k, v in c.items() if isinstance(v, int)}


async def list_robots(admin, api):
    out = {}
    off = 0
    while True:
        st, data = await http(admin, "GET", f"{api}/robots?offset={off}&limit=1000")
        if st != 200:
            return out
        items = data if isinstance(data, list) else data.get("robots") or data.get("items") or []
        for r in items:
            out[r["id"]] = r
        if isinstance(data, list) or not items or len(out) >= data.get("total", 0):
            return out
        off = len(out)


def parse_dur(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s)
    n, u = float(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--binary",
        default=os.path.join(
            os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target")),
            "debug",
            "orchestrator",
        ),
        help="the node binary to start (default: the debug build)",
    )
    p.add_argument("--node-url", help="test a running node instead of starting one")
    p.add_argument("--node-pid", type=int, help="with --node-url: its pid, for RSS and fd figures")
    p.add_argument("--admin-password", help="default: a random one (needed with --node-url)")
    p.add_argument("--port", type=int)
    p.add_argument("--scratch", default="/tmp/soak")
    p.add_argument("--pulse-timeout", default="5s")
    p.add_argument("--sweep-period", default="500ms")
    p.add_argument("--lease-ttl", default="30s")
    p.add_argument("--ws-robots", type=int, default=60)
    p.add_argument("--rest-robots", type=int, default=20)
    p.add_argument("--duration", type=float, default=180)
    p.add_argument("--uploads", type=int, default=6)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--on-lost", default="retry", choices=["retry", "abandon"])
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--work-min", type=float, default=0.02)
    p.add_argument("--work-max", type=float, default=0.3)
    p.add_argument("--app-fail-rate", type=float, default=0.05)
    p.add_argument("--biz-fail-rate", type=float, default=0.01)
    p.add_argument("--crash-rate", type=float, default=0.01)
    p.add_argument("--crash-min", type=float, default=1.0)
    p.add_argument("--crash-max", type=float, default=9.0, help="crash pauses beyond the pulse timeout make the robot lost")
    p.add_argument("--claim-wait", type=float, default=20, help="REST long-poll wait, capped by the pulse interval")
    p.add_argument("--no-verify-items", dest="verify_items", action="store_false")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--progress-every", type=float, default=15)
    a = p.parse_args()
    if a.seed is None:
        a.seed = secrets.randbelow(1 << 30)
    print("seed", a.seed, "args", vars(a), flush=True)
    sys.exit(asyncio.run(main_async(a)))


if __name__ == "__main__":
    main()
