"""A host-side prefetch thread: reads the next batches while the device runs the current step.

The order stays a pure function of the step (data.source.batch_indices), so prefetching changes
nothing about which examples a step sees, and a resumed run reads the same batches.
"""

from __future__ import annotations

import queue
import threading

from jaxdiff.data.source import batch_indices


_DONE = object()  # end-of-stream marker


class Prefetcher:
  """Iterates (step, images, labels) for steps start..stop-1, `depth` batches ahead."""

  def __init__(self, source, start: int, stop: int, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    args = (source, start, stop, batch_size, seed, process_index, process_count)
    self._thread = threading.Thread(target=self._work, args=args, daemon=True)
    self._thread.start()

  def _work(self, source, start, stop, batch_size, seed, process_index, process_count):
    try:
      for step in range(start, stop):
        idx = batch_indices(step, batch_size, len(source), seed, process_index, process_count)
        if not self._put((step,) + tuple(source.get(idx))):
          return
      self._put(_DONE)  # without it, a consumer iterating to the end would wait forever
    except BaseException as e:  # handed to the consumer, raised there
      self._put(e)

  def _put(self, item) -> bool:
    """Blocks until there is room or close() is called; False when closed."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is _DONE:
      self._queue.put(_DONE)  # stay exhausted on later calls
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
