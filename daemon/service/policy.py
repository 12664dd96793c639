"""The resident model, shared by the actor (sampling) and the learner loop (updates).

One lock serialises the two: a sample sees either the weights before an update or after it,
never half of one, and knows which ``policy_version`` produced it. Both run in worker threads so
the event loop keeps ingesting while torch computes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

from learners.core import LearnerState, sample, step
from schemas import BlockUpdate, GRPOGroup


class ResidentPolicy:
    def __init__(self, state: LearnerState, default_temperature: float | None = None, default_top_p: float | None = None):
        self._state = state
        self._lock = threading.Lock()
        self.temperature: float | None = None  # set by the collapse guard while it acts
        # the operator's sampling overrides (``actor.temperature``/``actor.top_p``); None: the model's
        self.default_temperature = default_temperature
        self.default_top_p = default_top_p

    @property
    def base_temperature(self) -> float:
        """The temperature sampling uses when the guard does not act."""
        t = self.default_temperature
        return float(self._state.config.temperature if t is None else t)

    @property
    def state(self) -> LearnerState:
        return self._state

    @property
    def policy_version(self) -> int:
        return self._state.policy_version

    def sample_sync(self, prompt: str, n: int, seed: int, temperature: float | None = None,
                    top_p: float | None = None) -> tuple[list[str], int]:
        with self._lock:
            version = self._state.policy_version
            # an explicit argument (probes) wins; then the guard's raised temperature; then the defaults
            if temperature is None:
                temperature = self.temperature if self.temperature is not None else self.default_temperature
            top_p = self.default_top_p if top_p is None else top_p
            return sample(self._state, prompt, n=n, seed=seed, temperature=temperature, top_p=top_p), version

    async def sample(self, prompt: str, n: int, seed: int, **kw) -> tuple[list[str], int]:
        return await asyncio.to_thread(self.sample_sync, prompt, n, seed, **kw)

    def apply_sync(self, group: GRPOGroup) -> tuple[list[BlockUpdate], float]:
        """Apply one group; returns the updates and the seconds the step took."""
        with self._lock:
            t0 = time.perf_counter()
            self._state, updates = step(self._state, group)
            return updates, time.perf_counter() - t0

    async def apply(self, group: GRPOGroup) -> tuple[list[BlockUpdate], float]:
        return await asyncio.to_thread(self.apply_sync, group)

    def with_state(self, fn: Callable[[LearnerState], object]) -> object:
        """Run ``fn`` on the state under the lock (snapshots, pinning)."""
        with self._lock:
            return fn(self._state)

    def replace_state(self, state: LearnerState) -> None:
        with self._lock:
            self._state = state
