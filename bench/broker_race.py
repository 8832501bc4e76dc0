"""The concurrent-upload race on `make run`'s embedded setup: `python -m bench.broker_race`.

Starts `python -m webportal.run` (what `make run` runs: SQLite, the filesystem broker, the
portal, a classifying worker under its supervisor) in a fresh var folder, makes an API token
and a case, then sends `--rounds` rounds of `--uploads` one-image uploads at once (one thread
each) through the API, and waits for every batch to finish. Prints JSON: the answers, the
batches by status, how many times the supervisor restarted the worker, and the lines of the
log that show a half-read message (`JSONDecodeError`). `--repo` runs another checkout (e.g. an
export of the commit before a fix) with this same script.

`--transport-only` measures the transports alone, in one process, kombu's own and the atomic
one (webportal.broker) in turn: `--uploads` threads each publish `--messages` messages while a
consumer polls the folder, `--rounds` times; it counts messages read half-written (the reader
gets `JSONDecodeError` and the message is gone) and messages lost.

    .venv/bin/python -m bench.broker_race --json bench/results/broker-race.json
    .venv/bin/python -m bench.broker_race --transport-only \
        --json bench/results/broker-transports.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "demo" / "lymphocyte-LY_771696.jpg"
RESTART_LINE = "the worker stopped"
HALF_READ = "JSONDecodeError"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(
    url: str, *, token: str, data: bytes | None = None, content_type: str = ""
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (localhost)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body[:200].decode(errors="replace")


def _multipart(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def run(*, repo: Path, rounds: int, uploads: int, timeout: float) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    var = Path(tempfile.mkdtemp(prefix="broker-race-"))
    env = {
        **os.environ,
        "HEMATOVISION_VAR_DIR": str(var),
        "DEBUG": "true",
        "PORT": str(port),
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log_path = var / "run.log"
    manage = [sys.executable, "manage.py"]
    started = time.monotonic()
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "webportal.run"], cwd=repo, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            token = _wait_and_issue_token(manage, repo=repo, env=env, base=base, log=log_path)
            status, case = _request(
                f"{base}/api/v1/cases/",
                token=token,
                data=json.dumps({"accession_number": "RACE-1"}).encode(),
                content_type="application/json",
            )
            assert status == 201, (status, case)
            content = SAMPLE.read_bytes()
            answers: dict[str, int] = {}
            batch_ids: list[int] = []
            lock = threading.Lock()

            def upload(n: int) -> None:
                body, content_type = _multipart(f"cell-{n}.jpg", content)
                code, answer = _request(
                    f"{base}/api/v1/cases/{case['id']}/batches/",
                    token=token,
                    data=body,
                    content_type=content_type,
                )
                with lock:
                    answers[str(code)] = answers.get(str(code), 0) + 1
                    if code == 201:
                        batch_ids.append(answer["id"])

            for round_ in range(rounds):
                threads = [
                    threading.Thread(target=upload, args=(round_ * uploads + i,))
                    for i in range(uploads)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            uploaded = time.monotonic()
            statuses = _wait_until_finished(base, token=token, ids=batch_ids, timeout=timeout)
            finished = time.monotonic()
        finally:
            os.killpg(supervisor.pid, signal.SIGTERM)
            try:
                supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
    text = log_path.read_text(errors="replace")
    by_status: dict[str, int] = {}
    for value in statuses.values():
        by_status[value] = by_status.get(value, 0) + 1
    return {
        "repo": str(repo),
        "rounds": rounds,
        "uploads_per_round": uploads,
        "answers": answers,
        "batches": len(batch_ids),
        "batches_by_status": by_status,
        "worker_restarts": text.count(RESTART_LINE),
        "half_read_messages": text.count(HALF_READ),
        "supervisor_gave_up": "stopping the portal too" in text,
        "upload_seconds": round(uploaded - started, 1),
        "finish_seconds": round(finished - uploaded, 1),
        "log": str(log_path),
    }


def _wait_and_issue_token(
    manage: list[str], *, repo: Path, env: dict[str, str], base: str, log: Path
) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):  # noqa: S310
                break
        except (OSError, urllib.error.HTTPError):
            time.sleep(1)
    else:
        raise RuntimeError(f"the portal did not answer; see {log}")
    out = subprocess.run(
        [*manage, "issue_token", "--lab", "demo", "--username", "race"],
        cwd=repo, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def _wait_until_finished(
    base: str, *, token: str, ids: list[int], timeout: float
) -> dict[int, str]:
    statuses = {batch_id: "queued" for batch_id in ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for batch_id, status in statuses.items():
            if status in {"queued", "processing"}:
                code, body = _request(f"{base}/api/v1/batches/{batch_id}/", token=token)
                if code == 200:
                    statuses[batch_id] = body["status"]
        if all(status not in {"queued", "processing"} for status in statuses.values()):
            break
        time.sleep(2)
    return statuses


def transport_race(*, transport: str, writers: int, messages: int) -> dict[str, int]:
    """One round: `writers` threads publish `messages` each while one consumer polls."""
    from kombu import Connection, Exchange, Queue

    from webportal.celery import broker_transport_options

    folder = Path(tempfile.mkdtemp(prefix="transport-race-"))
    name = f"q{uuid.uuid4().hex}"  # kombu remembers bindings per process, not per folder
    queue = Queue(name, Exchange(name), routing_key=name)

    def connect() -> Connection:
        options = broker_transport_options("filesystem://", folder)
        return Connection("filesystem://", transport=transport, transport_options=options)

    with connect() as setup:
        queue(setup.default_channel).declare()
    received: list[int] = []
    half_read = 0
    writing = threading.Event()
    writing.set()

    def write(start: int) -> None:
        with connect() as connection:
            producer = connection.Producer()
            for n in range(start, start + messages):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key=name)

    def read() -> None:
        nonlocal half_read
        with connect() as connection:
            simple = connection.SimpleQueue(name)  # the same queue, exchange and key
            while True:
                try:
                    message = simple.get(timeout=0.05)
                except simple.Empty:
                    if not writing.is_set():
                        return
                    continue
                except ValueError:  # json.JSONDecodeError: the file was read before it was written
                    half_read += 1
                    continue
                received.append(message.payload["n"])
                message.ack()

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(i * messages,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writing.clear()
    reader.join()
    sent = writers * messages
    return {"sent": sent, "received": len(set(received)), "half_read": half_read,
            "lost": sent - len(set(received))}  # fmt: skip


def transports(*, rounds: int, writers: int, messages: int) -> dict[str, Any]:
    from webportal.broker import TRANSPORT

    result: dict[str, Any] = {"rounds": rounds, "writers": writers, "messages_each": messages}
    for label, transport in (("kombu", "kombu.transport.filesystem:Transport"),
                             ("atomic", TRANSPORT)):  # fmt: skip
        runs = [
            transport_race(transport=transport, writers=writers, messages=messages)
            for _ in range(rounds)
        ]
        result[label] = {
            key: sum(run[key] for run in runs) for key in ("sent", "received", "half_read", "lost")
        }
        result[label]["rounds_with_a_loss"] = sum(1 for run in runs if run["lost"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for batches")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--transport-only", action="store_true", help="the transports alone")
    parser.add_argument("--messages", type=int, default=100, help="per thread (transport-only)")
    args = parser.parse_args(argv)
    if args.transport_only:
        figures = transports(rounds=args.rounds, writers=args.uploads, messages=args.messages)
        figures["command"] = "python -m bench.broker_race " + " ".join(argv or sys.argv[1:])
        figures["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = json.dumps(figures, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return 0 if figures["atomic"]["lost"] == 0 else 1
    result = run(
        repo=args.repo.resolve(), rounds=args.rounds, uploads=args.uploads, timeout=args.timeout
    )
    result["command"] = "python -m bench.broker_race " + " ".join(argv or sys.argv[1:])
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = result["batches_by_status"] == {"done": args.rounds * args.uploads}
    return 0 if ok and result["worker_restarts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
