"""The I/O selector given to kafka-python's clients: the stdlib's, minus a costly message.

Why: kafka-python 3.0 asks its selector for a socket's key every time it waits on the socket
(`NetworkSelector.register_event`) and registers it when the lookup raises KeyError, which is
the usual case. The stdlib builds that KeyError's message with the socket's repr, twice (the
mapping and `get_key` each format one), and a socket's repr asks the kernel for both of its
addresses: about a fifth of the producer's network thread on ml-latest-small (py-spy of
`python -m bench.stages`), time that thread holds the GIL the consumer thread waits for.
This selector raises the same KeyError without formatting the socket. Everything else is the
stdlib's default selector (epoll on Linux), as kafka-python would choose.
"""

from __future__ import annotations

import selectors
from typing import Any


class QuietSelector(selectors.DefaultSelector):
    """`selectors.DefaultSelector` whose failed `get_key` does not format the file object."""

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        if self.get_map() is None:
            raise RuntimeError("Selector is closed")
        # (the stdlib selectors' own members, the same since Python 3.4; not in typeshed)
        fd = self._fileobj_lookup(fileobj)  # type: ignore[attr-defined]
        key: selectors.SelectorKey | None = self._fd_to_key.get(fd)  # type: ignore[attr-defined]
        if key is None:
            raise KeyError("file object is not registered")
        return key
