"""A pool of killable verifier processes with a hard per-item wall-clock timeout.

Why not `multiprocessing.Pool` / `concurrent.futures`: neither can kill one stuck worker, so a
single `\\boxed{9^{9^{9^{9}}}}` stalls the batch (and with it every rank of a multi-GPU job).

Design:
- Each worker is a fresh interpreter (`python -m rewards.pool --worker-fd N`) started with
  `subprocess.Popen` and talking over a socketpair with `multiprocessing.connection` framing.
  A fresh interpreter is safe under torch/CUDA/DeepSpeed (nothing is forked) and, unlike the
  `spawn`/`forkserver` start methods, never re-imports the training script's `__main__`.
- The parent dispatches one item at a time per worker and waits on all sockets with the
  earliest deadline as timeout. A worker past `timeout` seconds is SIGKILLed and replaced (the
  replacement starts in the background; the other workers keep going); its item scores 0.0 with
  status "timeout". A worker that dies scores its item 0.0 with status "error". Both are counted.
- Inside the worker, math-verify's own `signal.alarm` timeout is set to 80% of the hard timeout,
  so most runaway sympy calls end without a restart; C-level hangs (huge integer powers) are
  what the hard kill is for.
- The parent never uses signals, so `map` works from any thread; a lock serializes batches.
  Each process (each `accelerate launch` rank) gets its own pool from `get_pool()` (keyed by
  pid, so a forked child never reuses its parent's sockets). Workers are shut down at exit
  (`atexit`), exit on EOF when the parent goes away, and on Linux die with it (PR_SET_PDEATHSIG).
- If workers cannot start at all (3 start failures in a row), the remaining items score 0.0 with
  status "error" and an error is logged: a broken pool never hangs or silently scores 0.

Worker count: `SPARSE_RLVR_REWARD_WORKERS`, else usable CPUs // `LOCAL_WORLD_SIZE`, in [1, 8].
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from multiprocessing.connection import Connection, wait
from pathlib import Path

from rewards.verify import verify_prepared, warm_up

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60.0  # seconds for a worker to import math-verify/sympy and report ready
MAX_START_FAILURES = 3
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


class Counters:
    """Process-wide, thread-safe counts of verifier outcomes (read by the TRL adapters)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._c: Counter[str] = Counter()

    def add_batch(self, statuses: list[str], n_verified: int = 0, n_deduplicated: int = 0) -> None:
        with self._lock:
            self._c["items"] += len(statuses)
            self._c.update(statuses)
            self._c["verified_by_pool"] += n_verified
            self._c["deduplicated"] += n_deduplicated

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


COUNTERS = Counters()


def default_num_workers() -> int:
    env = os.environ.get("SPARSE_RLVR_REWARD_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cpus // max(1, local_world)))


class _Worker:
    """One verifier subprocess and the parent's end of its socket."""

    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = "1"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rewards.pool", "--worker-fd", str(child_sock.fileno())],
                pass_fds=[child_sock.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None
        self.deadline = 0.0
        self.sent_at = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("verifier worker pid %s did not die cleanly: %s", self.proc.pid, e)
        self.conn.close()

    def request_stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass  # already gone: kill() below reaps it

    def stop(self, grace: float = 1.0) -> None:
        """Polite shutdown (after `request_stop`): wait up to `grace` s, then kill."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.debug("verifier worker pid %s ignored the stop request; killing", self.proc.pid)
        self.kill()


class VerifierPool:
    """Score canonical (pred, gold) pairs with `rewards.verify.verify_prepared` in worker processes.

    Args:
        num_workers: worker processes (default `default_num_workers()`).
        timeout: hard wall-clock seconds per item, measured from dispatch to a started worker.
    """

    def __init__(self, num_workers: int | None = None, timeout: float = 5.0):
        if timeout <= 0:
            raise ValueError(f"VerifierPool: timeout must be > 0 seconds, got {timeout}. Fix: pass e.g. timeout=5")
        self.num_workers = num_workers or default_num_workers()
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._start_failures = 0
        self._closed = False
        self.last_latencies: list[float] = []  # seconds per item of the last map() (for bench/)
        atexit.register(self.close)

    # -- lifecycle ---------------------------------------------------------------------------
    def _spawn(self) -> _Worker | None:
        try:
            return _Worker()
        except OSError as e:
            self._start_failures += 1
            COUNTERS.add("worker_start_failures")
            logger.error("could not start a verifier worker (%s); failure %d", e, self._start_failures)
            return None

    def start(self) -> None:
        """Start the workers now (otherwise the first `map` does); they report ready in ~1 s."""
        with self._lock:
            self._ensure_started()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> bool:
        """Start the workers and block until all report ready (True) or `timeout` passes (False).
        Optional: call it at trainer start so the first batch does not pay the ~1 s startup."""
        with self._lock:
            self._ensure_started()
            end = time.monotonic() + timeout
            while True:
                starting = {w.conn: w for w in self._workers if not w.ready}
                if not starting:
                    return bool(self._workers)
                left = end - time.monotonic()
                if left <= 0:
                    return False
                for conn in wait(list(starting), timeout=left):
                    w = starting[conn]
                    try:
                        w.ready = conn.recv() == "ready"
                    except (EOFError, OSError):
                        logger.warning("verifier worker pid %s died during startup; restarting", w.proc.pid)
                        self._start_failures += 1
                        self._replace(w, "startup")

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("VerifierPool is closed. Fix: create a new pool (or use rewards.pool.get_pool())")
        while len(self._workers) < self.num_workers and self._start_failures < MAX_START_FAILURES:
            w = self._spawn()
            if w is not None:
                self._workers.append(w)

    def _replace(self, w: _Worker, reason: str) -> None:
        w.kill()
        self._workers.remove(w)
        COUNTERS.add("worker_restarts")
        COUNTERS.add(f"worker_restarts_{reason}")
        nw = self._spawn()
        if nw is not None:
            self._workers.append(nw)

    def close(self) -> None:
        """Stop all workers (idempotent; registered with atexit)."""
        self._closed = True
        for w in self._workers:
            w.request_stop()
        end = time.monotonic() + 1.0
        for w in self._workers:
            w.stop(grace=max(0.0, end - time.monotonic()))
        self._workers = []

    # -- scoring -----------------------------------------------------------------------------
    def map(self, pairs: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """(score, status) for each (pred, gold) pair, in order. Never raises on content."""
        with self._lock:
            self._ensure_started()
            return self._map_locked(pairs)

    def _map_locked(self, pairs: list[tuple[str, str]]) -> list[tuple[float, str]]:
        results: list[tuple[float, str] | None] = [None] * len(pairs)
        latencies = [0.0] * len(pairs)
        queue = deque(range(len(pairs)))
        soft = int(self.timeout * 0.8) if self.timeout * 0.8 >= 1 else None  # math-verify's alarm, whole s

        def finish(w: _Worker, res: tuple[float, str]) -> None:
            assert w.job is not None
            results[w.job] = res
            latencies[w.job] = time.monotonic() - w.sent_at
            w.job = None

        while queue or any(w.job is not None for w in self._workers):
            if not self._workers:  # every start failed: fail the rest loudly, never hang
                logger.error(
                    "no verifier worker could start (%d failures); %d items score 0.0 with status 'error'",
                    self._start_failures, len(queue),
                )
                while queue:
                    results[queue.popleft()] = (0.0, "error")
                break
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.job is None and queue:
                    j = queue.popleft()
                    try:
                        w.conn.send((j, pairs[j][0], pairs[j][1], soft))
                    except (OSError, ValueError):
                        results[j] = (0.0, "error")
                        self._replace(w, "crash")
                        continue
                    w.job, w.sent_at, w.deadline = j, now, now + self.timeout
            waiting = [w for w in self._workers if w.job is not None or not w.ready]
            if not waiting:
                continue
            deadlines = [w.deadline if w.job is not None else w.started + STARTUP_TIMEOUT for w in waiting]
            by_conn = {w.conn: w for w in waiting}
            for conn in wait(list(by_conn), timeout=max(0.0, min(deadlines) - now)):
                w = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    if w.job is not None:
                        finish(w, (0.0, "error"))
                    logger.warning("verifier worker pid %s died (exit %s); restarting", w.proc.pid, w.proc.poll())
                    self._replace(w, "crash")
                    continue
                if msg == "ready":
                    w.ready = True
                    self._start_failures = 0
                elif w.job is not None and isinstance(msg, tuple) and msg[0] == w.job:
                    finish(w, (float(msg[1]), str(msg[2])))
            now = time.monotonic()
            for w in list(self._workers):
                if w.job is not None and now >= w.deadline:
                    finish(w, (0.0, "timeout"))
                    self._replace(w, "timeout")
                elif not w.ready and now >= w.started + STARTUP_TIMEOUT:
                    self._start_failures += 1
                    logger.error("verifier worker pid %s not ready after %.0f s; restarting", w.proc.pid, STARTUP_TIMEOUT)
                    self._replace(w, "startup")
        self.last_latencies = latencies
        return results  # type: ignore[return-value]


_POOLS: dict[int, VerifierPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(timeout: float = 5.0, num_workers: int | None = None) -> VerifierPool:
    """This process's shared pool (created on first use); `timeout` is updated on every call."""
    with _POOLS_LOCK:
        pool = _POOLS.get(os.getpid())
        if pool is None or pool._closed:
            pool = _POOLS[os.getpid()] = VerifierPool(num_workers=num_workers, timeout=timeout)
        pool.timeout = float(timeout)
        return pool


# -- worker side -------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent dies, even mid-computation in C."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError as e:
        logger.debug("PR_SET_PDEATHSIG unavailable: %s", e)


def _worker_main(fd: int) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the trainer; it closes us
    conn = Connection(fd)
    warm_up()  # math-verify/sympy imports and latex2sympy's parser caches, before reporting ready
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return 0
        if msg is None:
            return 0
        j, pred, gold, soft = msg
        score, status = verify_prepared(pred, gold, soft)
        conn.send((j, score, status))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Verifier worker process (started by VerifierPool; not for direct use).")
    parser.add_argument("--worker-fd", type=int, required=True, help="inherited socket file descriptor to serve on")
    sys.exit(_worker_main(parser.parse_args().worker_fd))
