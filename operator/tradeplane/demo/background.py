"""A loop on a daemon thread for the length of a `with` block: the demo's traffic generators."""

from __future__ import annotations

import threading
from typing import Self


class BackgroundLoop:
    """Runs `_run` on its own thread from `__enter__` until `__exit__` sets `_stop` and joins it."""

    thread_name = "background-loop"

    def _run(self) -> None:
        raise NotImplementedError

    def _closed(self) -> None:
        """After the thread ended: release what the loop held."""

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._closed()
