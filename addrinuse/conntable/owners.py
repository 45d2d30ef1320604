"""Which processes hold a socket: every pid whose fd table links to socket:[inode].

This is how psutil and `ss -p` find owners too (psutil._pslinux reads /proc/PID/fd the same way),
done here for the few inodes of one snapshot: psutil.net_connections() would also re-read every row
of /proc/net/tcp*, which at 50k TIME_WAIT entries costs hundreds of ms. A socket can have several
holders (pre-fork workers, a child that inherited the listener without FD_CLOEXEC): all are listed,
in pid order. TIME_WAIT entries have inode 0: no process holds them."""

from __future__ import annotations

import os
from dataclasses import replace

from addrinuse.conntable import Entry, Owner


def socket_owners(inodes: set[int]) -> dict[int, list[int]]:
    """inode -> every pid holding it (sorted). The whole of /proc is read: a socket's holders can be
    anywhere, so stopping at the first one found would miss the workers."""
    found: dict[int, set[int]] = {}
    if not inodes:
        return {}
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
                if inode in inodes:
                    found.setdefault(inode, set()).add(int(name))
    return {inode: sorted(pids) for inode, pids in found.items()}


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def attach_owners(entries: list[Entry]) -> list[Entry]:
    owners = socket_owners({e.inode for e in entries if e.inode})
    names = {pid: process_name(pid) for pids in owners.values() for pid in pids}
    return [replace(e, owners=tuple(Owner(pid, names[pid]) for pid in owners[e.inode])) if e.inode in owners else e
            for e in entries]
