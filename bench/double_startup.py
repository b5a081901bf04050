"""Start-up of the test double: from the command to its ready line, and from SIGTERM to
exit, over several runs on this machine.

    .venv/bin/python bench/double_startup.py [runs]
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run() -> tuple[float, float]:
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "double.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = process.stdout.readline().strip()
    ready = time.perf_counter() - began
    assert url.startswith("http://127.0.0.1:"), url
    began = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    stopped = time.perf_counter() - began
    process.stdout.close()
    return ready * 1000, stopped * 1000


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results = [one_run() for _ in range(runs)]
    ready = sorted(r for r, _ in results)
    stopped = sorted(s for _, s in results)
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, {runs} runs")
    print(
        f"command to ready line: median {statistics.median(ready):.0f} ms, max {ready[-1]:.0f} ms"
    )
    print(f"SIGTERM to exit: median {statistics.median(stopped):.0f} ms, max {stopped[-1]:.0f} ms")


if __name__ == "__main__":
    main()
