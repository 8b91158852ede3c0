"""The machine's own limit for starting processes, measured in the same run as a figure."""

from __future__ import annotations

import os
import threading
import time


def spawn_limit(count: int, threads: int = 2) -> float:
    """Processes per second that posix_spawn + waitpid start and reap here."""

    def spawn(share: int) -> None:
        for _ in range(share):
            pid = os.posix_spawn("/bin/true", ["true"], os.environ)
            os.waitpid(pid, 0)

    workers = [threading.Thread(target=spawn, args=(count // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (count // threads * threads) / (time.perf_counter() - started)
