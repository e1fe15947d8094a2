"""Run a loading function over a sequence of items on a background thread, at most `depth`
results ahead of the consumer, so reading and checking the next shard overlaps training on the
current one. Errors reach the consumer; a consumer that stops early stops the thread. Knows
nothing about shards or torch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1  # how often a blocked producer looks whether the consumer has gone


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def prefetched(load: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """load(item) for each item, in order, computed up to `depth` items ahead on one thread.

    Holds at most depth + 2 results at once: `depth` queued, one being built, one consumed."""
    if depth < 1:
        yield from map(load, items)
        return
    results: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                results.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(load(item)):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            put(_Failed(e))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="itwinai-hpc-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = results.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.error
            yield value
    finally:
        stop.set()
        thread.join()
