"""gunicorn settings for the customers service:  gunicorn -c gunicorn.conf.py 'app:create_app()'

Every value can be overridden from the environment (names below) or on the command line.
"""

import contextlib
import http
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import uuid

from gunicorn import util


def whole_number(name, default, least):
    """The environment's `name` as a whole number of at least `least`; otherwise the
    start stops here, in one line naming the setting, exit code 2 (as for the service's
    own settings)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < least:
        sys.stderr.write(
            f"customers-registry: setting {name}={raw!r} is not valid:"
            f" a whole number, {least} or more\n"
        )
        sys.exit(2)
    return value


# Where to listen. Behind nginx on the same host, loopback only.
bind = os.environ.get("BIND", "127.0.0.1:8000")

# Sync workers, one per core. Measured on this 2-core machine with wrk on the same cores,
# 16 connections of upserts (bench/upsert.lua), SQLite, 8 s each. Before the upsert was
# made cheap: 2 workers 876 req/s (p99 29 ms), 3 workers 761 (p99 56 ms), 4 workers 740
# (p99 98 ms), 2 workers x 4 threads 675 (p99 322 ms). Now, with SQLITE_SYNCHRONOUS=NORMAL:
# 2 workers 2328 req/s (p99 15 ms), 3 workers 2338 (p99 14 ms); with FULL, 3 workers
# 1789 and 4 workers 1695 against 2 workers' ~1500-1850. Again with the background
# checkpointer (NORMAL): 2 workers 2470, 3 workers 2409, 4 workers 2134; gthread with
# 2 workers x 2 threads 2220, x 4 threads 1024. The work is CPU-bound Python
# and SQLite lets one writer in at a time, so more processes than cores buy nothing
# reliable, and threads only add contention.
workers = whole_number("WEB_CONCURRENCY", os.cpu_count() or 1, 1)
worker_class = os.environ.get("WORKER_CLASS", "sync")
threads = whole_number("THREADS", 1, 1)

# A request that takes longer than this is a stuck worker: it is killed and replaced.
# nginx's proxy_read_timeout (deploy/nginx.conf) matches it.
timeout = whole_number("WORKER_TIMEOUT", 30, 0)

# On SIGTERM, workers finish the requests in hand for up to this long before exiting.
graceful_timeout = whole_number("GRACEFUL_TIMEOUT", 30, 0)

# Idle keep-alive (for the threaded workers; sync workers close after each response).
keepalive = whole_number("KEEPALIVE", 5, 0)

# Each worker builds its own app: no database connection is shared across a fork.
preload_app = False

# The longest request line gunicorn reads (its maximum). nginx (deploy/nginx.conf) stops
# at 4 KiB itself and answers 414, so whatever it passes on fits here.
limit_request_line = 8190

# Access log on stdout, one line a request with its request id (nginx's, the caller's or
# a new one), the client address the app saw and the duration to the microsecond; the
# error log on stderr. Both in LOG_FORMAT (text, or json: one object a line), written by
# logs.GunicornLogger, which keeps every key out of them.
accesslog = os.environ.get("ACCESS_LOG", "-")
errorlog = "-"
logger_class = "logs.GunicornLogger"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# The control socket (gunicorn 23+) would be written under $HOME; not needed here.
control_socket_disable = True


# What gunicorn answers by itself (a request line, header or chunked framing it cannot
# parse, a URI or header block over its limits) is the contract's JSON envelope with a
# fresh X-Request-Id, not gunicorn's HTML page. Its workers call util.write_error at the
# moment of answering, so replacing it here, in the master before it forks, covers every
# worker class. The message is fixed: gunicorn's own one quotes the request's bytes.
def write_json_error(sock, status_int, reason, mesg):
    title = {414: "URI Too Long"}.get(status_int) or http.HTTPStatus(status_int).phrase
    body = {"status": status_int, "error": title}
    if status_int == 400:
        body["message"] = "The request line, a header or the body framing is malformed"
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status_int} {body['error']}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"X-Request-Id: {uuid.uuid4().hex}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + data)


util.write_error = write_json_error


# Metrics: each worker writes its values to files in this folder and /metrics sums them
# (prometheus_client's multiprocess mode). Set PROMETHEUS_MULTIPROC_DIR to choose it; it
# is emptied at start. Otherwise a temporary folder is made here, and removed at exit: in
# /dev/shm (memory) when there is one, for every request writes to these files, and on a
# disk each write can add to the journal that SQLite's fsync (SQLITE_SYNCHRONOUS=FULL)
# waits for.
made_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    in_memory = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
    made_metrics_dir = tempfile.mkdtemp(prefix="customers-metrics-", dir=in_memory)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_metrics_dir


# A worker keeps the master's signal handlers from the fork until gunicorn installs its
# own (init_process): a SIGTERM in between, as when the service is stopped while a worker
# boots, went to the master's queue in the worker's copy of it, which nothing reads, and
# the worker served on until the master killed it at the graceful timeout (30 s). So a
# stop signal that reaches a booting worker is remembered here, and delivered again once
# the worker's own handlers are in place.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def post_fork(server, worker):
    queued = server.SIG_QUEUE  # this process's copy: the master reads its own
    if isinstance(queued, list):  # older gunicorn releases
        pending = list(queued)
    else:
        pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                pending.append(queued.get_nowait())
    worker.stop_signal = next((sig for sig in pending if sig in STOP_SIGNALS), None)

    def remember(sig, frame):
        worker.stop_signal = sig

    for sig in STOP_SIGNALS:
        signal.signal(sig, remember)


def post_worker_init(worker):
    if getattr(worker, "stop_signal", None) is not None:
        os.kill(os.getpid(), worker.stop_signal)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if made_metrics_dir is not None:
        shutil.rmtree(made_metrics_dir, ignore_errors=True)


def on_starting(server):
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for stale in os.listdir(metrics_dir):  # a previous run's values
        if stale.endswith(".db"):
            os.remove(os.path.join(metrics_dir, stale))
    # A bad setting or a database of a newer release stops the start here, in one line,
    # before any worker boots (the workers upgrade an older one).
    import app
    import migrations

    try:
        server.log.info(app.startup_line(os.environ, server.num_workers))
        app.check_database(os.environ)
    except (ValueError, migrations.SchemaTooNew) as exc:
        server.log.error("customers-registry: %s", exc)
        sys.exit(2)
