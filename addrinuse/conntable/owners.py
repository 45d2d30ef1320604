"""Which processes hold a socket: every pid whose fd table links to socket:[inode].

This is how psutil and `ss -p` find owners too (psutil._pslinux reads /proc/PID/fd the same way),
done here for the few inodes of one snapshot: psutil.net_connections() would also re-read every row
of /proc/net/tcp*, which at 50k TIME_WAIT entries costs hundreds of ms. A socket can have several
holders (pre-fork workers, a child that inherited the listener without FD_CLOEXEC): all are listed,
in pid order. TIME_WAIT entries have inode 0: no process holds them.

A poller (watch) passes a cache: a socket seen at the last poll keeps its holders while each of them
still has the same fd linked to it (one readlink per holder, instead of reading every process's fd
table at every poll); when one has not, the socket's holders are looked up again from scratch."""

from __future__ import annotations

import os

from addrinuse.conntable import Entry, Owner


def _scan(inodes: set[int]) -> dict[int, list[tuple[int, str]]]:
    """inode -> every (pid, fd) holding it. The whole of /proc is read: a socket's holders can be
    anywhere, so stopping at the first one found would miss the workers."""
    found: dict[int, list[tuple[int, str]]] = {}
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
                    found.setdefault(inode, []).append((int(name), fd))
    return found


def socket_owners(inodes: set[int]) -> dict[int, list[int]]:
    """inode -> every pid holding it (sorted)."""
    return {inode: sorted({pid for pid, _ in holders}) for inode, holders in _scan(inodes).items()} if inodes else {}


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _still_held(inode: int, holders: list[tuple[int, str]]) -> bool:
    link = f"socket:[{inode}]"
    for pid, fd in holders:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != link:
                return False
        except OSError:
            return False
    return True


def resolve_owners(inodes: set[int], cache: dict | None = None) -> dict[int, tuple[Owner, ...]]:
    """inode -> its holders as Owners in pid order (inodes no process holds are left out). cache: a
    dict kept between calls (inode -> (owners, holders)), pruned to the inodes of this call."""
    out: dict[int, tuple[Owner, ...]] = {}
    missing = set(inodes)
    if cache:
        for inode in inodes:
            known = cache.get(inode)
            if known is not None and _still_held(inode, known[1]):
                if known[0]:
                    out[inode] = known[0]
                missing.discard(inode)
    found = _scan(missing) if missing else {}
    names: dict[int, str | None] = {}
    for inode, holders in found.items():
        pids = sorted({pid for pid, _ in holders})
        for pid in pids:
            if pid not in names:
                names[pid] = process_name(pid)
        out[inode] = tuple(Owner(pid, names[pid]) for pid in pids)
    if cache is not None:
        # A socket no visible process holds (another pid namespace's) is remembered as held by
        # none, so that it does not cost a full scan at every poll.
        for inode in missing:
            cache[inode] = (out.get(inode, ()), found.get(inode, []))
    if cache is not None:
        for inode in [i for i in cache if i not in inodes]:
            del cache[inode]
    return out


def attach_owners(entries: list[Entry]) -> list[Entry]:
    owners = resolve_owners({e.inode for e in entries if e.inode})
    return [e._replace(owners=owners[e.inode]) if e.inode in owners else e for e in entries]
