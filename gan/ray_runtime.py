"""Connecting a job to Ray: the cluster in RAY_ADDRESS (`ray job submit`), else an embedded local one."""
from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    A local Ray gets one logical CPU more than the machine has: the model actors take the real cores,
    and the light read/write tasks still get scheduled (an actor pool holding every CPU would starve them).
    """
    import ray
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=num_cpus or (os.cpu_count() or 1) + 1, include_dashboard=False)
