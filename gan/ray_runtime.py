"""Connecting a job to Ray: the cluster in RAY_ADDRESS (`ray job submit`), else an embedded local one.

Only RAY_ADDRESS joins a cluster: a plain `ray.init()` would also join whatever `/tmp/ray/ray_current_cluster`
names (the last `ray start` on this machine, perhaps long dead or another user's), and fail there with
"num_cpus must not be provided". A Ray started with `ray start` here is joined with `RAY_ADDRESS=auto`. The
processes of a Ray started here are told where its own dashboard (the State API) is, so they do not follow that
file either.

By default the user's terminal shows our own lines only: Ray's logs, its actors' and workers' output
(controller chatter, placement-group cleaners, token notices) and Ray Data's progress bars stay in Ray's
log files (`/tmp/ray/session_latest/logs`). `--verbose` brings all of it back.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading

_verbose = False
# The GCS address of the Ray this process started itself (address="local"): that one has no autoscaler and never
# grows. A Ray joined later in the same process (a test's multi-node cluster) is another address.
_embedded_gcs: str | None = None
# The dashboard serves Ray's State API, which Ray Train's placement-group cleaner needs: without it a training run
# whose driver is killed (a search trial stopped early) keeps its workers' CPUs reserved. None, Ray's default, starts
# it wherever its packages are (ray[default], which pyproject's ray[serve] brings); True would refuse to start Ray
# at all where they are not ("Cannot include dashboard with missing packages"), as on a GPU image given a bare Ray.
DASHBOARD = None
NATIVE_LOG = os.path.join(tempfile.gettempdir(), "gan-art-ray-native.log")


def set_verbose(verbose: bool) -> None:
    """Choose, before Ray starts, whether Ray's own output reaches the terminal."""
    global _verbose
    _verbose = verbose
    if not verbose:
        # Ray's driver-side loggers (token set-up, "Started a local Ray instance", Train/Data tips).
        for name in ("ray", "ray.train", "ray.data", "ray.serve"):
            logging.getLogger(name).setLevel(logging.ERROR)


def is_verbose() -> bool:
    return _verbose


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    A local Ray gets one logical CPU more than the machine has: the model actors take the real cores,
    and the light read/write tasks still get scheduled (an actor pool holding every CPU would starve them).
    """
    import ray
    if ray.is_initialized():
        return
    quiet = {} if _verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    if not _verbose:
        _native_stderr_to_file()
    term = _python_sigterm_handler()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **quiet)
    else:
        start_local_ray(num_cpus=num_cpus or (os.cpu_count() or 1) + 1, **quiet)
        global _embedded_gcs
        _embedded_gcs = ray.get_runtime_context().gcs_address
    if not _verbose:
        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours are drawn by the driver
        set_verbose(False)  # ray.init configures Ray's loggers again
    if term is not None:  # Ray's native crash handler took SIGTERM over (and aborts the process on it): give it back
        signal.signal(signal.SIGTERM, term)


def start_local_ray(**init_args) -> None:
    """`ray.init` of a new local Ray (with these arguments) whose own processes find its State API.

    Ray's own actors (Ray Train's placement-group cleaner) reach the State API at RAY_API_SERVER_ADDRESS, else at
    the one Ray they find on the machine: beside another live Ray the cleaner's thread dies ("Found multiple
    active Ray instances") and the reserved CPUs of a run whose driver was killed (a search trial stopped early)
    are never freed; beside the address file of a killed `ray start` head it tried the dead cluster, 10 s per
    training run. The processes this Ray starts inherit the environment as ray.init finds it, so they are told
    where its dashboard will be.
    """
    import ray
    port = free_port()
    with environ(RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{port}"):
        ray.init(address="local", include_dashboard=DASHBOARD, dashboard_host="127.0.0.1", dashboard_port=port,
                 **init_args)


@contextlib.contextmanager
def environ(**values: str):
    """These environment variables while the block runs, the process's own after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may still take it before it is bound again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_sigterm_handler():
    """The job's own SIGTERM handler (jobs.cli turns SIGTERM into Ctrl-C), when there is one and it can be reset."""
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) and threading.current_thread() is threading.main_thread() else None


def shutdown_embedded() -> None:
    """Shut down the Ray this process started itself (waiting for its workers to exit); leave a joined one alone."""
    import ray
    if ray.is_initialized() and _embedded_gcs is not None and ray.get_runtime_context().gcs_address == _embedded_gcs:
        ray.shutdown()


def check_placeable(each: dict[str, float], count: int, what: str, fields: dict[str, str]) -> None:
    """Fail at once, naming the setting, when `count` `what`s (each asking Ray for `each`) can never be placed.

    An embedded local Ray has what it started with, and Ray Train retries placing its workers for ever (Ray Data
    its actors likewise), silently: `--use-gpu` on a machine without a GPU would hang, not fail. A cluster joined
    through RAY_ADDRESS (`ray job submit`) may gain nodes from its autoscaler, so there the job waits, as Ray does.
    `fields`: the setting (and flag) behind each resource name; "*" for custom resources.
    """
    import ray
    if _embedded_gcs is None or ray.get_runtime_context().gcs_address != _embedded_gcs:
        return
    have = ray.cluster_resources()
    for name, amount in each.items():
        if amount * count > have.get(name, 0.0) + 1e-9:
            hint = ": no GPU that Ray sees here" if name == "GPU" and not have.get("GPU") else ""
            who = f"{count} {what}{'s need' if count > 1 else ' needs'}"
            raise ValueError(f"{fields.get(name, fields['*'])}: {who} {amount * count:g} {name} in all, and this "
                             f"machine's Ray has {have.get(name, 0.0):g}{hint} (it cannot grow; a cluster can, "
                             f"through RAY_ADDRESS)")


def _native_stderr_to_file() -> None:
    """Send what Ray's C++ core writes straight to file descriptor 2 (its own error notices) to NATIVE_LOG,
    while Python's sys.stderr (our errors and progress bars) keeps the terminal."""
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        log = os.open(NATIVE_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
        sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    except (OSError, AttributeError, ValueError):  # no real fd 2 (embedded, captured): leave stderr as it is
        pass
