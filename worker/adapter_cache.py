"""Three tiers of adapters for one resident model: GPU slots → CPU LRU of parsed adapters → the blob store.

`acquire(ids)` makes every adapter of one batch resident in a slot and pins those slots until `release(ids)`
(or use `with cache.batch(ids) as slots:`); least-recently-used unpinned slots are evicted to make room. An
adapter id not seen before is read from the store on first use (sha256 verified), so adapters trained after the
worker started work at once. Adapter rows are immutable, so a cached copy never goes stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import BlobStore, get_verified
from storage.models import Adapter as AdapterRow
from trainer import Adapter, AdapterSlots, adapter_from_bytes

logger = logging.getLogger(__name__)


class AdapterMissing(LookupError):
    """No (undeleted) adapter row with this id, or its file is gone from the store."""


class TooManyAdapters(ValueError):
    """One batch needs more distinct adapters than there are free slots; split the batch."""


def adapter_fetcher(session_factory: sessionmaker[Session], store: BlobStore) -> Callable[[str], Adapter]:
    """Read adapter `id` from the DB row and the store: raises AdapterMissing, BlobIntegrityError, AdapterError."""
    from storage.blobs import BlobNotFound

    def fetch(adapter_id: str) -> Adapter:
        with session_factory() as session:
            row = session.get(AdapterRow, adapter_id)
            if row is None or row.deleted_at is not None:
                raise AdapterMissing(f"adapter {adapter_id} does not exist")
            key, sha = row.blob_key, row.sha256
        try:
            data = get_verified(store, key, sha)
        except BlobNotFound as exc:
            raise AdapterMissing(f"adapter {adapter_id}: its file is missing from the blob store") from exc
        return adapter_from_bytes(data)

    return fetch


class AdapterCache:
    def __init__(self, slots: AdapterSlots, *, cpu_capacity: int, fetch: Callable[[str], Adapter]) -> None:
        self.slots = slots
        self.cpu_capacity = max(0, cpu_capacity)
        self._fetch = fetch
        self._gpu: OrderedDict[str, str] = OrderedDict()  # adapter id -> slot, least recently used first
        self._free: list[str] = list(slots.names)
        self._cpu: OrderedDict[str, Adapter] = OrderedDict()
        self._pins: Counter[str] = Counter()  # adapter id -> number of unreleased acquires
        self._lock = threading.RLock()
        self.hits_gpu = 0
        self.hits_cpu = 0
        self.misses = 0
        self.evictions = 0
        self.loads = 0
        self.load_seconds = 0.0

    @property
    def num_slots(self) -> int:
        return len(self.slots.names)

    def put(self, adapter_id: str, adapter: Adapter) -> None:
        """Seed the CPU tier with an adapter already in memory (e.g. one just trained)."""
        with self._lock:
            self._remember(adapter_id, adapter)

    def _remember(self, adapter_id: str, adapter: Adapter) -> None:
        if self.cpu_capacity == 0:
            return
        self._cpu[adapter_id] = adapter
        self._cpu.move_to_end(adapter_id)
        while len(self._cpu) > self.cpu_capacity:
            self._cpu.popitem(last=False)

    def _take_slot(self, keep: set[str]) -> str:
        if self._free:
            return self._free.pop(0)
        for victim, slot in self._gpu.items():  # oldest first
            if victim not in keep and self._pins[victim] == 0:
                del self._gpu[victim]
                self.evictions += 1
                logger.debug("evicted adapter %s from %s", victim, slot)
                return slot
        raise TooManyAdapters(f"all {self.num_slots} adapter slots are pinned")

    def _load(self, adapter_id: str, keep: set[str]) -> str:
        adapter = self._cpu.get(adapter_id)
        if adapter is not None:
            self.hits_cpu += 1
            self._cpu.move_to_end(adapter_id)
        else:
            self.misses += 1
            adapter = self._fetch(adapter_id)  # raises; nothing changed yet
            self._remember(adapter_id, adapter)
        slot = self._take_slot(keep)
        t0 = time.perf_counter()
        try:
            self.slots.load(slot, adapter)
        except BaseException:
            self.slots.clear(slot)  # a half-copied slot must not serve anything
            self._free.append(slot)
            self._cpu.pop(adapter_id, None)
            raise
        self.loads += 1
        self.load_seconds += time.perf_counter() - t0
        self._gpu[adapter_id] = slot
        return slot

    def acquire(self, adapter_ids: Iterable[str], errors: dict[str, Exception] | None = None) -> dict[str, str]:
        """Make each adapter resident and pin its slot; returns {adapter id: slot name}.

        With `errors` given, an adapter that cannot be loaded is recorded there and left out of the result;
        without it the first failure is raised (after releasing what this call pinned).
        """
        ids = list(dict.fromkeys(adapter_ids))
        with self._lock:
            if len(ids) > self.num_slots:
                raise TooManyAdapters(f"{len(ids)} distinct adapters in one batch, {self.num_slots} slots")
            keep = set(ids)
            result: dict[str, str] = {}
            try:
                for adapter_id in ids:
                    slot = self._gpu.get(adapter_id)
                    if slot is not None:
                        self.hits_gpu += 1
                        self._gpu.move_to_end(adapter_id)
                    else:
                        try:
                            slot = self._load(adapter_id, keep)
                        except TooManyAdapters:
                            raise
                        except Exception as exc:
                            if errors is None:
                                raise
                            logger.warning("adapter %s could not be loaded: %s", adapter_id, exc)
                            errors[adapter_id] = exc
                            continue
                    self._pins[adapter_id] += 1
                    result[adapter_id] = slot
            except BaseException:
                self.release(result)
                raise
            return result

    def release(self, adapter_ids: Iterable[str]) -> None:
        with self._lock:
            for adapter_id in dict.fromkeys(adapter_ids):
                if self._pins[adapter_id] > 0:
                    self._pins[adapter_id] -= 1
                if self._pins[adapter_id] == 0:
                    del self._pins[adapter_id]

    @contextlib.contextmanager
    def batch(
        self, adapter_ids: Iterable[str], errors: dict[str, Exception] | None = None
    ) -> Iterator[dict[str, str]]:
        mapping = self.acquire(adapter_ids, errors)
        try:
            yield mapping
        finally:
            self.release(mapping)

    def resident(self) -> dict[str, str]:
        with self._lock:
            return dict(self._gpu)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            lookups = self.hits_gpu + self.hits_cpu + self.misses
            return {
                "slots": self.num_slots,
                "gpu_resident": len(self._gpu),
                "cpu_cached": len(self._cpu),
                "hits_gpu": self.hits_gpu,
                "hits_cpu": self.hits_cpu,
                "misses": self.misses,
                "evictions": self.evictions,
                "loads": self.loads,
                "load_seconds": round(self.load_seconds, 4),
                "hit_rate": round((self.hits_gpu + self.hits_cpu) / lookups, 4) if lookups else None,
            }


def split_by_slots(adapter_ids: list[str | None], num_slots: int) -> list[list[int]]:
    """Group row indices into consecutive chunks that need at most `num_slots` distinct adapters each."""
    chunks: list[list[int]] = []
    current: list[int] = []
    distinct: set[str] = set()
    for i, adapter_id in enumerate(adapter_ids):
        if adapter_id is not None and adapter_id not in distinct and len(distinct) >= num_slots:
            chunks.append(current)
            current, distinct = [], set()
        current.append(i)
        if adapter_id is not None:
            distinct.add(adapter_id)
    if current:
        chunks.append(current)
    return chunks
