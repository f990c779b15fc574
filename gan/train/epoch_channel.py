"""The training driver's line to its run: each epoch's metrics, sent by Ray Train's controller, and how far the
driver lets the workers train (the gate of a search trial). One small Ray actor per run.

In a module of its own that imports only the standard library: an actor's process imports the module that
defines its class, and the training code (torch) would cost each run's channel ~3 s of CPU to start.
"""
from __future__ import annotations

import asyncio


class EpochChannel:
    """Metrics in the order the controller put them; the last epoch the driver has handled (-1: none)."""

    def __init__(self):
        self.pending: list[dict] = []
        self.arrived = asyncio.Event()
        self.epoch = -1

    async def put(self, metrics: dict) -> None:
        self.pending.append(metrics)
        self.arrived.set()

    async def take(self, timeout_s: float) -> list[dict]:
        """Every epoch's metrics not taken yet, waiting up to `timeout_s` for one when there are none."""
        if not self.pending:
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout_s)
            except asyncio.TimeoutError:
                return []
        taken, self.pending = self.pending, []
        self.arrived.clear()
        return taken

    async def open(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    async def opened(self) -> int:
        return self.epoch
