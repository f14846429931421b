"""A running sw2s over HTTP, for the scripts that measure it (standard library only):
requests with JSON bodies, a head job run to its end, and every example of a task."""
import json
import sys
import time
import urllib.error
import urllib.request


def call(base, method, path, body=None):
    """(status, body): the body parsed when it is JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            text = r.read().decode()
            is_json = r.headers.get("content-type", "").startswith("application/json")
            return r.status, (json.loads(text) if is_json and text else text)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ok(resp, what):
    """The body of a 2xx answer; any other status ends the script, saying what failed."""
    status, body = resp
    if status >= 300:
        sys.exit(f"{what}: {status} {body}")
    return body


def run_job(base, task):
    """Starts a head job and waits for it; the finished job (the script ends unless it succeeded)."""
    job = ok(call(base, "POST", f"/v1/tasks/{task}/jobs", {"mode": "head"}), "job")
    while True:
        j = ok(call(base, "GET", f"/v1/tasks/{task}/jobs/{job['id']}"), "job state")
        if j["state"] in ("succeeded", "failed", "cancelled"):
            if j["state"] != "succeeded":
                sys.exit(f"job {j}")
            return j
        time.sleep(1)


def examples(base, task):
    """Every example of the task, by id, across pages."""
    out, after = {}, ""
    while True:
        page = ok(call(base, "GET", f"/v1/tasks/{task}/examples?limit=1000&after={after}"), "examples")
        for e in page["examples"]:
            out[e["id"]] = e
        after = page.get("next_cursor")
        if not after:
            return out
