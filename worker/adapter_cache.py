"""Three tiers of adapters for one resident model: LoRA-bank slots on the device → a host LRU of parsed adapters
(pinned memory on CUDA, in the bank's dtype, so a slot load is one asynchronous copy) → the blob store.

`acquire(ids)` makes every adapter of one batch resident in a bank slot and pins those slots until `release(ids)`
(or use `with cache.batch(ids) as names:`); least-recently-used unpinned slots are evicted to make room. A slot is
named by its adapter id, which is what a `GenerationRequest` routes by. An adapter id not seen before is read from
the store on first use (sha256 verified), so adapters trained after the worker started work at once. Adapter rows
are immutable, so a cached copy never goes stale.

`prefetch(ids)` reads adapters that queued requests will need into the host tier on a background thread while the
current batch samples (SwiftDiffusion's bounded asynchronous loading, arXiv 2407.02031): the store read, checksum
and parse are the slow part; the copy into a slot at acquire time takes about a millisecond on a GPU. Slots
themselves are written only between batches, never under a running forward.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage.blobs import BlobNotFound, BlobStore, get_verified
from storage.models import Adapter as AdapterRow
from trainer import Adapter, LoraBank, adapter_from_bytes

logger = logging.getLogger(__name__)


class AdapterMissing(LookupError):
    """No (undeleted) adapter row with this id, or its file is gone from the store."""


class TooManyAdapters(ValueError):
    """One batch needs more distinct adapters than there are free slots; split the batch."""


def adapter_fetcher(session_factory: sessionmaker[Session], store: BlobStore) -> Callable[[str], Adapter]:
    """Read adapter `id` from the DB row and the store: raises AdapterMissing, BlobIntegrityError, AdapterError."""
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
    def __init__(self, bank: LoraBank, *, cpu_capacity: int, fetch: Callable[[str], Adapter],
                 prefetch_limit: int = 16) -> None:
        self.bank = bank
        self.cpu_capacity = max(0, cpu_capacity)
        self.prefetch_limit = max(0, prefetch_limit)
        self._fetch = fetch
        self._gpu: OrderedDict[str, int] = OrderedDict()  # adapter id -> bank slot, least recently used first
        self._free: list[int] = list(range(1, bank.capacity + 1))
        self._cpu: OrderedDict[str, Adapter] = OrderedDict()
        self._pins: Counter[str] = Counter()  # adapter id -> number of unreleased acquires
        self._lock = threading.RLock()
        self._wanted: queue.Queue[str] = queue.Queue()
        self._prefetcher: threading.Thread | None = None
        self.hits_gpu = 0
        self.hits_cpu = 0
        self.misses = 0
        self.evictions = 0
        self.loads = 0
        self.prefetched = 0
        self.load_seconds = 0.0

    @property
    def num_slots(self) -> int:
        return self.bank.capacity

    def put(self, adapter_id: str, adapter: Adapter) -> None:
        """Seed the host tier with an adapter already in memory (e.g. one just trained)."""
        with self._lock:
            self._remember(adapter_id, self._host_copy(adapter))

    def _host_copy(self, adapter: Adapter) -> Adapter:
        """The adapter in the bank's dtype; in pinned memory when the bank is on CUDA (asynchronous slot loads)."""
        dtype = self.bank.scale.dtype
        pin = self.bank.device.type == "cuda"
        tensors = {}
        for k, v in adapter.tensors.items():
            t = v.to(dtype)
            tensors[k] = t.pin_memory() if pin else t
        return Adapter(tensors, adapter.meta, dict(adapter.extra))

    def _remember(self, adapter_id: str, adapter: Adapter) -> None:
        if self.cpu_capacity == 0:
            return
        self._cpu[adapter_id] = adapter
        self._cpu.move_to_end(adapter_id)
        while len(self._cpu) > self.cpu_capacity:
            self._cpu.popitem(last=False)

    @property
    def prefetching(self) -> bool:
        """Whether `prefetch` does anything: it needs a host tier and a non-zero limit."""
        return self.cpu_capacity > 0 and self.prefetch_limit > 0

    def prefetch(self, adapter_ids: Iterable[str]) -> int:
        """Queue adapters for the host tier (at most `prefetch_limit` at a time); returns how many were queued."""
        if not self.prefetching:
            return 0
        with self._lock:
            todo = [a for a in dict.fromkeys(adapter_ids) if a not in self._gpu and a not in self._cpu]
        todo = todo[: max(0, self.prefetch_limit - self._wanted.qsize())]
        for adapter_id in todo:
            self._wanted.put(adapter_id)
        if todo and (self._prefetcher is None or not self._prefetcher.is_alive()):
            self._prefetcher = threading.Thread(target=self._prefetch_loop, name="adapter-prefetch", daemon=True)
            self._prefetcher.start()
        return len(todo)

    def _prefetch_loop(self) -> None:
        while True:
            try:
                adapter_id = self._wanted.get(timeout=1.0)
            except queue.Empty:
                return
            try:
                self._prefetch_one(adapter_id)
            finally:
                self._wanted.task_done()

    def _prefetch_one(self, adapter_id: str) -> None:
        with self._lock:
            if adapter_id in self._gpu or adapter_id in self._cpu:
                return
        try:
            adapter = self._host_copy(self._fetch(adapter_id))  # outside the lock: batches go on meanwhile
        except Exception as exc:  # acquire reports it to the request that needs it
            logger.debug("prefetch of adapter %s failed: %s", adapter_id, exc)
            return
        with self._lock:
            self._remember(adapter_id, adapter)
            self.prefetched += 1

    def wait_prefetched(self, timeout: float = 10.0) -> None:
        """Block until the prefetch queue is drained (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._wanted.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _take_slot(self, keep: set[str]) -> int:
        if self._free:
            return self._free.pop(0)
        for victim, slot in self._gpu.items():  # oldest first
            if victim not in keep and self._pins[victim] == 0:
                del self._gpu[victim]
                self.evictions += 1
                logger.debug("evicted adapter %s from %s", victim, slot)
                return slot
        raise TooManyAdapters(f"all {self.num_slots} adapter slots are pinned")

    def _load(self, adapter_id: str, keep: set[str]) -> int:
        adapter = self._cpu.get(adapter_id)
        if adapter is not None:
            self.hits_cpu += 1
            self._cpu.move_to_end(adapter_id)
        else:
            self.misses += 1
            adapter = self._host_copy(self._fetch(adapter_id))  # raises; nothing changed yet
            self._remember(adapter_id, adapter)
        slot = self._take_slot(keep)
        t0 = time.perf_counter()
        try:
            self.bank.load(slot, adapter, name=adapter_id)
        except BaseException:
            self.bank.clear(slot)  # a half-copied slot must not serve anything
            self._free.append(slot)
            self._cpu.pop(adapter_id, None)
            raise
        self.loads += 1
        self.load_seconds += time.perf_counter() - t0
        self._gpu[adapter_id] = slot
        return slot

    def acquire(self, adapter_ids: Iterable[str], errors: dict[str, Exception] | None = None) -> dict[str, str]:
        """Make each adapter resident and pin its slot; returns {adapter id: the name requests route by}.

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
                    if adapter_id in self._gpu:
                        self.hits_gpu += 1
                        self._gpu.move_to_end(adapter_id)
                    else:
                        try:
                            self._load(adapter_id, keep)
                        except TooManyAdapters:
                            raise
                        except Exception as exc:
                            if errors is None:
                                raise
                            logger.warning("adapter %s could not be loaded: %s", adapter_id, exc)
                            errors[adapter_id] = exc
                            continue
                    self._pins[adapter_id] += 1
                    result[adapter_id] = adapter_id
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

    def resident(self) -> dict[str, int]:
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
                "prefetched": self.prefetched,
                "load_seconds": round(self.load_seconds, 4),
                "hit_rate": round((self.hits_gpu + self.hits_cpu) / lookups, 4) if lookups else None,
            }


def split_by_slots(adapter_ids: Sequence[str | tuple[str, ...] | None], num_slots: int) -> list[list[int]]:
    """Group row indices into consecutive chunks that need at most `num_slots` distinct adapters each; a row may
    need several (a style and a subject adapter: a tuple)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    distinct: set[str] = set()
    for i, entry in enumerate(adapter_ids):
        ids = {entry} if isinstance(entry, str) else set(entry or ())
        if current and len(distinct | ids) > num_slots:
            chunks.append(current)
            current, distinct = [], set()
        current.append(i)
        distinct |= ids
    if current:
        chunks.append(current)
    return chunks
