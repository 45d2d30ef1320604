"""Which process holds a socket: the pid whose fd table links to socket:[inode].

This is how psutil and `ss -p` find owners too (psutil._pslinux reads /proc/PID/fd the same way),
done here for the few inodes of one snapshot: psutil.net_connections() would also re-read every row
of /proc/net/tcp*, which at 50k TIME_WAIT entries costs hundreds of ms. psutil names the process.
TIME_WAIT entries have inode 0: no process holds them."""

from __future__ import annotations

import os
from dataclasses import replace

from addrinuse.conntable import Entry


def socket_owners(inodes: set[int]) -> dict[int, int]:
    """inode -> pid for the given socket inodes (first holder found; a forked child may share it)."""
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes and inode not in found:
                    found[inode] = int(name)
        if len(found) == len(inodes):
            break
    return found


def process_name(pid: int) -> str | None:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return None


def attach_owners(entries: list[Entry]) -> list[Entry]:
    owners = socket_owners({e.inode for e in entries if e.inode})
    names = {pid: process_name(pid) for pid in set(owners.values())}
    return [replace(e, pid=owners[e.inode], process=names[owners[e.inode]]) if e.inode in owners else e
            for e in entries]
