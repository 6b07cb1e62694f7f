"""One progress bar for every long command: tqdm on stderr with rate and ETA.

stdout stays free for a command's result (`--json` prints exactly one object there). When stderr is
a log file rather than a terminal, the bar redraws rarely so logs stay short.
"""

from __future__ import annotations

import sys


def bar(iterable=None, *, total: int | None = None, desc: str, unit: str = "it",
        initial: int = 0, leave: bool = True, disable: bool = False):
  """A tqdm bar (iterable wrapper or manual `update`), written to stderr; shows `[elapsed<ETA]`."""
  from tqdm import tqdm
  return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=leave,
              disable=disable, file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5 if sys.stderr.isatty() else 30.0)
