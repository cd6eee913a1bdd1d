"""A client written from the README alone: admin sign-in, a process, robots over REST v1 and the
prototype API, several uploads in a row, a misbehaving robot, hostile CSVs, a slow client, then
the node at rest (robot loads must add up to the items the store shows ASSIGNED or STARTED).

    python3 ops/scripts/readme_client.py http://127.0.0.1:8000 ADMIN_PASSWORD

Needs `requests`. Run it against a node started with a short --http-idle-timeout (e.g. 5s) to
see the slow client cut off quickly. It may run again on the same store (and on each node of a
cluster in turn): its process and robots get new names each time."""
import json, socket, sys, time, requests

BASE = sys.argv[1]
PW = sys.argv[2]
RUN = f"{time.time():.0f}"  # names and titles are unique: a second run on the same store uses new ones
s = requests.Session()
tok = s.post(f"{BASE}/api/v1/auth/login", json={"username": "admin", "password": PW}).json()["token"]
H = {"Authorization": f"Bearer {tok}"}
proc = s.post(f"{BASE}/api/v1/processes", json={"title": f"Stranger reload {RUN}"}, headers=H).json()["id"]
robots = []
for i in range(4):
    r = s.post(f"{BASE}/api/v1/robots", json={"name": f"py-{RUN}-{i}", "capacity": 3}, headers=H).json()
    robots.append((r["id"], r["token"]))
seed_id, seed_tok = robots.pop()

def rest_robot(rid, rtok, budget):
    RH = {"Authorization": f"Token {rtok}"}
    s.post(f"{BASE}/api/v1/robot/pulse", json={"status": "ACTIVE"}, headers=RH).raise_for_status()
    done = 0
    while done < budget:
        items = s.post(f"{BASE}/api/v1/robot/items/claim?max=3&wait=0.3", headers=RH).json()
        if not items:
            return done
        for it in items:
            for verb, body in (("start", {}), ("complete", {"observation": "ok", "output": {"n": 1}})):
                body["lease_id"] = it["lease_id"]
                r = s.post(f"{BASE}/api/v1/robot/items/{it['id']}/{verb}", json=body, headers=RH)
                assert r.status_code == 200, (verb, r.status_code, r.text)
            done += 1
    return done

def seed_robot():
    SH = {"Authorization": f"Token {seed_tok}"}
    assert s.patch(f"{BASE}/api/robots/?robot_id={seed_id}&status=ACTIVE", headers=SH).status_code == 200
    done = 0
    tasks = s.get(f"{BASE}/api/tasks/?robot_id={seed_id}", headers=SH).json()
    for t in tasks:
        for it in t["item_set"]:
            for st in ("STARTED", "COMPLETED"):
                r = s.patch(f"{BASE}/api/items?robot_id={seed_id}&item_id={it['id']}&status={st}&observation=Sin%20observaciones", headers=SH)
                assert r.status_code == 200, r.text
            done += 1
        r = s.patch(f"{BASE}/api/tasks?robot_id={seed_id}&task_id={t['id']}&status=COMPLETED", headers=SH)
        assert r.status_code == 200, ("task patch", r.status_code, r.text)
    return done

# Several uploads in a row, worked by REST robots and the prototype robot.
for n in range(4):
    csv = "linea,valor,field_name\n" + "".join(f"{i},{3000000+i},recarga\n" for i in range(1, 301))
    task = s.post(f"{BASE}/api/v1/tasks?process_id={proc}", data=csv, headers={**H, "Content-Type": "text/csv"}).json()
    total = 0
    while True:
        t = s.get(f"{BASE}/api/v1/tasks/{task['id']}", headers=H).json()
        if t["status"] == "COMPLETED":
            break
        for rid, rtok in robots:
            total += rest_robot(rid, rtok, 20)
        total += seed_robot()
    print(f"task {task['id']} completed: {t['counts']}")

# A misbehaving robot: deep output, huge observation, someone else's item, garbage body.
rid, rtok = robots[0]
RH = {"Authorization": f"Token {rtok}"}
csv = "a,b\n" + "".join(f"{i},x\n" for i in range(5))
task = s.post(f"{BASE}/api/v1/tasks?process_id={proc}", data=csv, headers={**H, "Content-Type": "text/csv"}).json()
time.sleep(0.5)
items = s.post(f"{BASE}/api/v1/robot/items/claim?max=3&wait=2", headers=RH).json()
it = items[0]
deep = {}
cur = deep
for _ in range(60):
    cur["a"] = {}
    cur = cur["a"]
for body, label in ((json.dumps({"lease_id": it["lease_id"], "output": deep}), "deep"),
                    (json.dumps({"lease_id": it["lease_id"], "observation": "x" * 200000}), "huge obs"),
                    ("{not json", "garbage"),
                    ("[" * 500 + "]" * 500, "nested body")):
    r = s.post(f"{BASE}/api/v1/robot/items/{it['id']}/complete", data=body,
               headers={**RH, "Content-Type": "application/json"})
    print(label, r.status_code, r.json()["error"]["code"])
    assert 400 <= r.status_code < 500
other_rid, other_tok = robots[1]
r = s.post(f"{BASE}/api/v1/robot/items/{it['id']}/start", json={"lease_id": it["lease_id"]},
           headers={"Authorization": f"Token {other_tok}"})
print("someone else's item", r.status_code, r.json()["error"]["code"])
# Hostile CSVs.
for body, label in (("a" + ",a" * 2, "dup header"), (",".join(f"c{i}" for i in range(600)) + "\n" + ",".join("1"*600) + "\n", "600 columns"),
                    ("a,b\n1,\"" + "\n" * 100000, "unterminated"), ("", "empty")):
    r = s.post(f"{BASE}/api/v1/tasks?process_id={proc}", data=body, headers={**H, "Content-Type": "text/csv"})
    print(label, r.status_code, r.json()["error"]["code"], r.json()["error"]["message"][:60])
# A slow client: headers never finished; the node closes it.
host, port = BASE.split("//")[1].rsplit(":", 1)
sock = socket.create_connection((host, int(port)))
sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
t0 = time.time()
sock.settimeout(120)
closed = sock.recv(100) == b""
print("slow client", "closed" if closed else "answered", "after", round(time.time() - t0, 1), "s")
# Release what the misbehaving robot holds, then check the node at rest.
for it in items:
    s.post(f"{BASE}/api/v1/robot/items/{it['id']}/release", json={"lease_id": it["lease_id"]}, headers=RH)
time.sleep(1.5)
loads = sum(r["load"] for r in s.get(f"{BASE}/api/v1/robots", headers=H).json())
held = sum(t["counts"]["assigned"] + t["counts"]["started"]
           for t in s.get(f"{BASE}/api/v1/tasks?limit=100", headers=H).json()["tasks"])
print("robot loads", loads, "items held in the store", held)
assert loads == held, "loads at rest must equal what the store holds"
print("health", s.get(f"{BASE}/healthz").json())
