# A robot for Orchestrator RPA in plain Python 3 (standard library only).
# Set ORCH_URL and ORCH_ROBOT_TOKEN, put your automation in work(), run it.
import json, os, urllib.request

BASE = os.environ.get("ORCH_URL", "http://127.0.0.1:8000")
TOKEN = os.environ["ORCH_ROBOT_TOKEN"]
WAIT = os.environ.get("ORCH_CLAIM_WAIT", "20")  # seconds a claim waits for work (long poll)
EXIT_WHEN_IDLE = os.environ.get("ORCH_EXIT_WHEN_IDLE") == "1"


def call(path, body=None):
    request = urllib.request.Request(
        BASE + path, method="POST", data=json.dumps(body or {}).encode(),
        headers={"Authorization": "Token " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


class BusinessError(Exception):
    """The data is wrong: retrying will not help."""


def work(values):
    # Your automation: read the CSV row's columns, do the job, return what to record.
    return {"echo": values}


call("/api/v1/robot/pulse", {"status": "ACTIVE"})
while True:
    items = call("/api/v1/robot/items/claim?wait=" + WAIT)  # also counts as a pulse
    if not items and EXIT_WHEN_IDLE:
        break
    for item in items:
        lease = {"lease_id": item["lease_id"]}
        call(f"/api/v1/robot/items/{item['id']}/start", lease)
        try:
            output = work(item["values"])
            call(f"/api/v1/robot/items/{item['id']}/complete",
                 {**lease, "observation": "done", "output": output})
        except BusinessError as error:
            call(f"/api/v1/robot/items/{item['id']}/fail",
                 {**lease, "kind": "business", "message": str(error)})
        except Exception as error:  # an application error: the orchestrator retries the item
            call(f"/api/v1/robot/items/{item['id']}/fail",
                 {**lease, "kind": "application", "message": str(error)})
