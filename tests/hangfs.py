"""A tiny read-only FUSE file system whose reads or directory listings never return until a gate file
appears: a stuck network mount, for real.

Run as `python hangfs.py MOUNTPOINT GATE [NAME=SRC | NAME! | NAME/] ...`:

- ``NAME=SRC``  a file with the bytes of SRC, read normally
- ``NAME!``     a file of 4 KiB whose read blocks until GATE exists
- ``NAME/``     a directory, holding the normal files, whose listing blocks until GATE exists

The kernel waits for a FUSE read killably: SIGALRM does not interrupt it (this server ignores
FUSE_INTERRUPT), only SIGKILL does, which is what Celery's hard time limit sends.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy, on libfuse2


class HangFS(Operations):  # type: ignore[misc]
    def __init__(self, gate: str, specs: list[str]) -> None:
        self.gate = gate
        self.files: dict[str, bytes] = {}
        self.hangs: set[str] = set()
        self.dirs: set[str] = set()
        for spec in specs:
            if "=" in spec:
                name, src = spec.split("=", 1)
                with open(src, "rb") as handle:
                    self.files[name] = handle.read()
            elif spec.endswith("!"):
                self.hangs.add(spec[:-1])
            elif spec.endswith("/"):
                self.dirs.add(spec[:-1])

    def _wait(self) -> None:
        while not os.path.exists(self.gate):
            time.sleep(0.1)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        name = path.strip("/").split("/")[-1] if path != "/" else ""
        now = int(time.time())
        base = {"st_uid": 0, "st_gid": 0, "st_atime": now, "st_mtime": now, "st_ctime": now, "st_nlink": 1}
        if path == "/" or name in self.dirs:
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if name in self.files:
            return {**base, "st_mode": stat.S_IFREG | 0o644, "st_size": len(self.files[name])}
        if name in self.hangs:
            return {**base, "st_mode": stat.S_IFREG | 0o644, "st_size": 4096}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            self._wait()
            return [".", "..", *self.files]
        return [".", "..", *self.files, *self.hangs, *self.dirs]

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        name = path.strip("/").split("/")[-1]
        if name in self.hangs:
            self._wait()
            return b"\0" * size
        return self.files[name][offset : offset + size]


if __name__ == "__main__":
    mountpoint, gate, *specs = sys.argv[1:]
    FUSE(HangFS(gate, specs), mountpoint, foreground=True, nothreads=False, ro=True, allow_other=True)
