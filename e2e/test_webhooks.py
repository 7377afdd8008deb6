"""Webhooks end to end: a server, the CLI, jobs on the local provider, and a receiver on
loopback that checks each message's signature with the Standard Webhooks library (and by
hand). Failing, silent and absent receivers; a server killed with a message unsent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from hodei.devdb import free_port
from hodei.testing import ServerProcess, eventually

pytestmark = pytest.mark.e2e


class Receiver:
    """An HTTP endpoint on loopback: keeps every POST (path, headers, body) and answers
    with the codes it is given, one a request, then 200."""

    def __init__(self, *codes: int) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.codes = list(codes)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"busy, try later" if code >= 300 else b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def server(fresh_database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(fresh_database_url, tmp_path, http=True) as process:
        yield process


def define(server: ServerProcess, name: str, url: str, *flags: str) -> str:
    """`webhook set`; its signing secret."""
    made = server.cli("webhook", "set", name, "--url", url, *flags, check=True)
    (line,) = [line for line in made.stdout.splitlines() if line.startswith("Signing secret: ")]
    assert "it is not shown again" in made.stderr
    return line.removeprefix("Signing secret: ")


def signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The message's signature by ``secret``, made by hand as the specification says."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The message, its signature checked by the specification's library and by hand."""
    message: dict[str, Any] = Verifier(secret).verify(body, headers)
    assert headers["webhook-signature"] == signature(secret, headers, body)
    assert headers["content-type"] == "application/json"
    return message


def messages(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return list(json.loads(server.cli("-o", "json", "webhook", "get", name, check=True).stdout)["deliveries"])


def test_a_job_that_ends_is_posted_signed_to_each_webhook_told_of_it(server: ServerProcess, receiver: Receiver) -> None:
    secret = define(server, "failures", f"{receiver.url}/hook?token=t0k3n", "--on", "failed,timeout", "-l", "team=data")
    listed = server.cli("webhook", "list", check=True).stdout
    assert "failures" in listed and "t0k3n" in listed and "FAILED,TIMEOUT" in listed
    run = ("job", "run", "-p", "local", "--wait")
    failed = server.cli(*run, "-c", "echo bye; exit 3", "-l", "team=data").stdout.strip()
    server.cli(*run, "-c", "true", "-l", "team=data")  # SUCCEEDED: not one of its states
    server.cli(*run, "-c", "exit 1", "-l", "team=web")  # another team's
    eventually(lambda: receiver.received or None, timeout=20, what="the message")
    ((path, headers, body),) = receiver.received
    assert path == "/hook?token=t0k3n" and headers["user-agent"].startswith("hodei-jobs/")
    message = verified(secret, headers, body)
    assert message["type"] == "job.finished"
    job = message["data"]
    assert (job["id"], job["state"], job["exit_code"], job["spec"]["labels"]) == (failed, "FAILED", 3, {"team": "data"})
    # The job as `job get` prints it, as it was when the webhook was told: the phases after
    # its end (its log stored, its worker released) may have come since (a sweep between).
    now = json.loads(server.cli("-o", "json", "job", "get", failed, check=True).stdout)
    assert {**job, "phases": None} == {**now, "phases": None}
    assert job["phases"] == now["phases"][: len(job["phases"])]
    assert job["phases"][-1]["name"] in ("finished", "logs_stored", "worker_released")
    (sent,) = eventually(lambda: [m for m in messages(server, "failures") if m["state"] == "DELIVERED"] or None)
    assert (sent["id"], sent["job_id"], sent["attempts"], sent["last_status"]) == (
        headers["webhook-id"],
        failed,
        1,
        200,
    )
    shown = server.cli("webhook", "get", "failures", check=True).stdout
    assert f"job {failed}: DELIVERED, 1 attempt, last HTTP 200" in shown
    # Where a job's operator looks first: which webhooks were told of it, and how it went.
    described = server.cli("job", "describe", failed, check=True).stdout
    assert "Webhook messages" in described
    assert f"failures: {sent['id']} " in described and "DELIVERED, 1 attempt, last HTTP 200" in described
    page = requests.get(f"{server.http_url}/jobs/{failed}", headers={"Accept": "text/html"}, timeout=30)
    assert page.ok and 'id="webhook-messages"' in page.text
    assert f'<td>failures</td><td title="{sent["id"]}">' in page.text and "<td>HTTP 200</td>" in page.text
    as_json = json.loads(server.cli("-o", "json", "job", "describe", failed, check=True).stdout)
    assert [(m["webhook"], m["state"]) for m in as_json["webhook_messages"]] == [("failures", "DELIVERED")]
    quiet = server.cli("-o", "json", "job", "list", "-l", "team=web", check=True).stdout
    (other,) = json.loads(quiet)["jobs"]
    assert (
        json.loads(server.cli("-o", "json", "job", "describe", other["id"], check=True).stdout)["webhook_messages"]
        == []
    )


PIPELINE = """\
name: build
provider: local
command: "%(build)s"
labels: {team: data}
---
name: test
provider: local
command: "true"
after: {build: ok}
---
name: report
provider: local
command: "true"
after: {build: notok}
"""


def test_a_webhook_told_of_pipelines_gets_one_message_when_a_pipeline_ends(
    server: ServerProcess, receiver: Receiver, tmp_path: Path
) -> None:
    """`webhook set --pipelines` (GitLab's pipeline events): one `pipeline.finished` a pipeline,
    with the pipeline as `job workflow -o json` prints it, when it ends in one of its states and
    its first job's labels match; its jobs' own ends are not told to it. Retried, a pipeline
    that ends again is told again."""
    secret = define(server, "pipelines", f"{receiver.url}/p", "--pipelines", "--on", "FAILED", "-l", "team=data")
    shown = server.cli("webhook", "get", "pipelines", check=True).stdout
    assert "About: pipelines (one message when a pipeline ends)" in shown
    assert "pipelines" in server.cli("webhook", "list", check=True).stdout
    file = tmp_path / "pipeline.yaml"
    file.write_text(PIPELINE % {"build": "exit 3"})
    failed = server.cli("job", "run", "--file", str(file), "--wait")
    assert failed.returncode == 3, failed.stderr
    build, test, report = failed.stdout.split()
    file.write_text(PIPELINE % {"build": "true"})
    assert server.cli("job", "run", "--file", str(file), "--wait").returncode == 0  # SUCCEEDED: not its state
    eventually(lambda: receiver.received or None, timeout=30, what="the pipeline's message")
    ((path, headers, body),) = receiver.received
    message = verified(secret, headers, body)
    assert (path, message["type"]) == ("/p", "pipeline.finished")
    data = message["data"]
    assert (data["id"], data["state"]) == (build, "FAILED")
    assert [(job["job"]["id"], job["skipped"]) for job in data["jobs"]] == [
        (build, False),
        (test, True),
        (report, False),
    ]
    assert data == json.loads(server.cli("-o", "json", "job", "workflow", build, check=True).stdout)
    (sent,) = eventually(lambda: [m for m in messages(server, "pipelines") if m["state"] == "DELIVERED"] or None)
    assert (sent["type"], sent["job_id"]) == ("pipeline.finished", build)
    assert f"pipeline {build}: DELIVERED, 1 attempt" in server.cli("webhook", "get", "pipelines", check=True).stdout
    page = requests.get(f"{server.http_url}/webhooks/pipelines", headers={"Accept": "text/html"}, timeout=30)
    assert f'<a href="/workflows/{build}">{build[:8]}</a>' in page.text

    # Retried (build fails again), it ends again: a second message, with the copies.
    assert server.cli("job", "retry", "--workflow", build, "--wait").returncode == 3
    eventually(lambda: len(receiver.received) == 2 or None, timeout=30, what="the retried pipeline's message")
    again = verified(secret, receiver.received[1][1], receiver.received[1][2])["data"]
    assert again["state"] == "FAILED" and [job["copy_of"] for job in again["jobs"]] == [[build], [test], []]
    refused = server.cli("webhook", "set", "starts", "--url", receiver.url, "--pipelines", "--on", "RUNNING")
    assert refused.returncode == 2 and "a webhook told of pipelines is told of how they end" in refused.stderr
    audit = server.cli("audit", "--kind", "webhook", check=True).stdout
    assert ", pipelines, on FAILED" in audit, audit


def test_a_webhook_on_running_is_told_of_each_attempts_start_with_the_job_as_it_was_then(
    server: ServerProcess, receiver: Receiver
) -> None:
    """`--on RUNNING`: a job.started message for each attempt, its data the job right
    after it started, even when the job has ended by the time the message is written (a
    retried job's two attempts end in a second); a webhook set without RUNNING is not told."""
    secret = define(server, "starts", f"{receiver.url}/starts", "--on", "running,failed")
    define(server, "ends", f"{receiver.url}/ends")
    assert "On: RUNNING, FAILED\n" in server.cli("webhook", "get", "starts", check=True).stdout
    retried = server.cli(
        "job", "run", "-p", "local", "-c", "exit 3", "--retry", "1", "--retry-backoff", "0", "--wait"
    ).stdout.strip()

    def told() -> list[tuple[str, dict[str, str], bytes]] | None:
        return receiver.received if len(receiver.received) == 4 else None

    eventually(told, timeout=30, what="two starts, a failure and an ending")
    bodies = {
        (path, verified(secret, headers, body)["type"])
        for path, headers, body in receiver.received
        if path == "/starts"
    }
    assert bodies == {("/starts", "job.started"), ("/starts", "job.finished")}
    # Sent as they come due, several at once: the order they arrive in is the network's.
    started = sorted(
        (
            verified(secret, headers, body)["data"]
            for path, headers, body in receiver.received
            if path == "/starts" and json.loads(body)["type"] == "job.started"
        ),
        key=lambda job: int(job["attempt"]),
    )
    assert [(job["id"], job["state"], job["attempt"], job["exit_code"]) for job in started] == [
        (retried, "RUNNING", 1, None),
        (retried, "RUNNING", 2, None),
    ]
    assert started[0]["phases"][-1]["name"] == "started" and started[0]["completed_at"] is None
    assert [phase["name"] for phase in started[1]["phases"]].count("requeued") == 1
    assert [json.loads(body)["type"] for path, _, body in receiver.received if path == "/ends"] == ["job.finished"]
    assert sorted(m["type"] for m in messages(server, "starts")) == ["job.finished", "job.started", "job.started"]


def test_a_receiver_that_fails_gets_the_message_again_with_the_same_id(server: ServerProcess) -> None:
    receiver = Receiver(503)
    try:
        secret = define(server, "flaky", receiver.url)
        tested = server.cli("webhook", "test", "flaky")
        assert tested.returncode == 1, tested.stderr
        assert (
            "webhook.test: PENDING, 1 attempt, last HTTP 503 (answered 503 Service Unavailable: busy, try later)"
            in (tested.stdout)
        )
        assert "next try" in tested.stdout
        eventually(lambda: len(receiver.received) == 2 or None, timeout=20, what="the second attempt")
        first, second = receiver.received
        assert first[1]["webhook-id"] == second[1]["webhook-id"] and first[2] == second[2]
        for _, headers, body in receiver.received:
            assert verified(secret, headers, body)["type"] == "webhook.test"
        (sent,) = eventually(lambda: [m for m in messages(server, "flaky") if m["state"] == "DELIVERED"] or None)
        assert (sent["attempts"], sent["last_status"]) == (2, 200)
        again = server.cli("webhook", "redeliver", sent["id"], check=True)
        assert "PENDING, 0 attempts" in again.stdout
        eventually(lambda: len(receiver.received) == 3 or None, timeout=20, what="the redelivery")
        assert receiver.received[2][1]["webhook-id"] == sent["id"]
    finally:
        receiver.close()


def test_a_silent_receiver_holds_up_no_other(server: ServerProcess, receiver: Receiver) -> None:
    """An attempt waits 10 s for its answer on the event loop, not in a thread or a sweep:
    the other webhook's message arrives meanwhile, and jobs go on being admitted."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never reads nor answers
    try:
        define(server, "silent", f"http://127.0.0.1:{silent.getsockname()[1]}/")
        define(server, "heard", receiver.url)
        job_id = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
        eventually(lambda: receiver.received or None, timeout=8, what="the message to the webhook that answers")
        assert json.loads(receiver.received[0][2])["data"]["id"] == job_id
        quick = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", "--timeout", "30")
        assert quick.returncode == 0, quick.stderr
        waited = eventually(
            lambda: [m for m in messages(server, "silent") if m["last_error"]] or None, timeout=30, what="its timeout"
        )
        assert waited[0]["last_error"] == "no answer within 10 s" and waited[0]["state"] == "PENDING"
    finally:
        silent.close()


def test_a_message_outlives_a_server_killed_before_it_was_sent(server: ServerProcess) -> None:
    port = free_port()
    secret = define(server, "later", f"http://127.0.0.1:{port}/")
    job_id = server.cli("job", "run", "-p", "local", "-c", "true", "--wait", check=True).stdout.strip()
    # An attempt is counted as its message is claimed, its error once the send failed: wait for both.
    refused = eventually(
        lambda: [m for m in messages(server, "later") if m["attempts"] >= 1 and m["last_error"]] or None, timeout=20
    )
    assert refused[0]["state"] == "PENDING" and "Cannot connect" in refused[0]["last_error"]
    server.kill()
    receiver = Receiver()
    receiver.http.server_close()  # the receiver comes up where the webhook points
    receiver.http = ThreadingHTTPServer(("127.0.0.1", port), receiver.http.RequestHandlerClass)
    receiver.thread = threading.Thread(target=receiver.http.serve_forever, daemon=True)
    receiver.thread.start()
    try:
        server.start()
        eventually(lambda: receiver.received or None, timeout=30, what="the message after the restart")
        ((_, headers, body),) = receiver.received
        assert verified(secret, headers, body)["data"]["id"] == job_id
    finally:
        receiver.close()


def test_bad_webhook_input_is_refused_by_name_and_writes_nothing(server: ServerProcess) -> None:
    refused_before_sending: tuple[tuple[tuple[str, ...], str], ...] = (
        (("set", "a/b", "--url", "http://x/"), "a webhook's name is 1 to 63"),
        (("set", "w", "--url", "ftp://x/"), "http:// or https:// with a host"),
        (("set", "w", "--url", "http://x/", "--on", "PENDING"), "not of PENDING"),
        (("set", "w", "--url", "http://x/", "-l", "!"), "label selector `!`"),
        (("set", "w", "--url", "http://x/", "-l", "a=1", "-l", "a=2"), "a cannot also be '1'"),
    )
    for flags, says in refused_before_sending:
        refused = server.cli("webhook", *flags)
        assert refused.returncode == 2 and says in refused.stderr, (flags, refused.stderr)
    found_nothing: tuple[tuple[tuple[str, ...], str], ...] = (
        (("get", "nope"), "webhook 'nope' not found"),
        (("test", "nope"), "webhook 'nope' not found"),
        (("redeliver", "nope"), "a message's id is a UUID"),
        (("redeliver", "00000000-0000-0000-0000-000000000000"), "no webhook message"),
    )
    for flags, says in found_nothing:
        refused = server.cli("webhook", *flags)
        assert refused.returncode == 2 and says in refused.stderr, (flags, refused.stderr)
    assert server.cli("webhook", "list", check=True).stdout.splitlines()[1:] == []


def test_the_console_lists_webhooks_sends_a_test_and_sends_a_message_again(
    server: ServerProcess, receiver: Receiver
) -> None:
    """The Webhooks page (admins: a URL may hold a credential): each webhook with its
    messages' counts; a webhook's page with its newest messages, Send a test and Send
    again and Delete, as `webhook test`, `webhook redeliver` and `webhook delete` do."""
    define(server, "console-hook", receiver.url + "/hook", "--on", "FAILED", "-l", "team=data")
    browser = requests.Session()
    browser.headers["Accept"] = "text/html"
    listed = browser.get(f"{server.http_url}/webhooks", timeout=30)
    assert listed.ok and 'href="/webhooks" class="here"' in listed.text
    row = listed.text.split('<tr data-webhook="console-hook">', 1)[1].split("</tr>", 1)[0]
    assert f"<code>{receiver.url}/hook</code>" in row and "<td>FAILED</td><td>team=data</td>" in row
    sent = browser.post(f"{server.http_url}/webhooks/console-hook/test", timeout=30)
    assert sent.ok and sent.url.endswith("/webhooks/console-hook")
    assert [json.loads(body)["type"] for _, _, body in receiver.received] == ["webhook.test"]
    (message,) = messages(server, "console-hook")
    assert f'<tr data-message="{message["id"]}">' in sent.text and "<td>DELIVERED</td>" in sent.text
    assert "0 waiting, 0 failed, 1 delivered" in sent.text
    again = browser.post(f"{server.http_url}/webhooks/console-hook/redeliver", data={"id": message["id"]}, timeout=30)
    assert again.ok
    eventually(lambda: len(receiver.received) == 2 or None, timeout=20, what="the message sent again")
    assert receiver.received[1][1]["webhook-id"] == message["id"]
    missing = browser.get(f"{server.http_url}/webhooks/no-such-hook", timeout=30)
    assert missing.status_code == 404 and "no-such-hook" in missing.text
    deleted = browser.post(f"{server.http_url}/webhooks/console-hook/delete", timeout=30)
    assert deleted.ok and deleted.url.endswith("/webhooks") and 'data-webhook="console-hook"' not in deleted.text
    assert server.cli("webhook", "get", "console-hook").returncode == 2


def test_a_rotated_secret_signs_beside_the_new_one_for_its_overlap(server: ServerProcess, receiver: Receiver) -> None:
    def rotate(overlap: str) -> tuple[str, str]:
        rotated = server.cli("webhook", "rotate", "rolling", "--overlap", overlap, check=True)
        (line,) = [line for line in rotated.stdout.splitlines() if line.startswith("Signing secret: ")]
        assert "it is not shown again" in rotated.stderr
        return line.removeprefix("Signing secret: "), rotated.stdout

    def tested() -> tuple[dict[str, str], bytes]:
        receiver.received.clear()
        server.cli("webhook", "test", "rolling", check=True)
        ((_, headers, body),) = receiver.received
        return headers, body

    first = define(server, "rolling", f"{receiver.url}/a")
    second, shown = rotate("1h")
    assert second.startswith("whsec_") and second != first
    assert "Previous secret: signs too until " in shown
    # For the overlap, two signatures: the new secret's, then the old one's; a receiver
    # holding either accepts the message. A new URL keeps both.
    server.cli("webhook", "set", "rolling", "--url", f"{receiver.url}/b", check=True)
    headers, body = tested()
    assert headers["webhook-signature"] == f"{signature(second, headers, body)} {signature(first, headers, body)}"
    for secret in (first, second):
        assert Verifier(secret).verify(body, headers)["type"] == "webhook.test"
    (listed,) = json.loads(server.cli("-o", "json", "webhook", "list", check=True).stdout)
    assert listed["url"] == f"{receiver.url}/b" and listed["previous_secret_until"]
    page = requests.get(f"{server.http_url}/webhooks/rolling", headers={"Accept": "text/html"}, timeout=30)
    assert page.ok and 'id="previous-secret"' in page.text
    # Rotated again without an overlap: the newest alone signs, and the one before stops.
    third, _ = rotate("0")
    headers, body = tested()
    assert verified(third, headers, body)["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        Verifier(second).verify(body, headers)
    got = json.loads(server.cli("-o", "json", "webhook", "get", "rolling", check=True).stdout)
    assert got["webhook"]["previous_secret_until"] is None
    said = server.cli("audit", "--kind", "webhook", check=True).stdout
    assert "signing secret rotated: the old one signs too until " in said
    assert "signing secret rotated: the old one stopped" in said
    # Bad input, refused before anything changes (exit 2, as every refusal).
    for flags, error in (
        (["rolling", "--overlap", "8d"], "the overlap must be between 0 and 7 days, got 691200 s"),
        (["rolling", "--overlap", "-1h"], "takes seconds or a duration"),
        (["nowhere"], "webhook 'nowhere' not found"),
    ):
        refused = server.cli("webhook", "rotate", *flags)
        assert refused.returncode == 2 and error in refused.stderr, refused.stderr
    headers, body = tested()
    assert verified(third, headers, body)["type"] == "webhook.test"
