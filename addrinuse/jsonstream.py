"""Streaming JSON: one document written while its long list is still being produced.

`table --json` over a whole table (50k entries and more) writes each entry as it is decoded instead
of building the document first: memory stays flat and the first bytes leave at once. The bytes are
exactly what `json.dumps(document, allow_nan=False)` would give for the same document (default
separators ", " and ": ", ASCII escapes), followed by a newline as click.echo adds one;
tests/test_table_stream.py compares the two on a real table.

entry_json(entry) is json.dumps(entry.to_dict()) without the dict: a format string with the
string pieces (addresses, state names) encoded once and remembered."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as encode_str  # what json.dumps uses for str
from typing import Iterable, TextIO

BATCH = 512  # entries joined per write(): fewer calls into the text layer

_STRINGS: dict[str, str] = {}
_LITERALS = {None: "null", True: "true", False: "false"}
ENTRY_TEMPLATE = ('{"family": %d, "laddr": %s, "lport": %d, "raddr": %s, "rport": %d, "state": %s, "owners": %s, '
          '"inode": %s, "uid": %s, "timer": %s, "expires_in_s": %s, "v6only": %s, "cookie": %s}')


def _str(text: str | None) -> str:
    if text is None:
        return "null"
    out = _STRINGS.get(text)
    if out is None:
        out = encode_str(text)
        if len(_STRINGS) < 65536:  # addresses and state names repeat; keep the memo bounded
            _STRINGS[text] = out
    return out


def owners_json(owners) -> str:
    return "[" + ", ".join(f'{{"pid": {o.pid:d}, "name": {"null" if o.name is None else encode_str(o.name)}}}'
                           for o in owners) + "]"


def entry_json(e) -> str:
    """json.dumps(e.to_dict(), allow_nan=False) for an Entry, byte for byte."""
    expires = e.expires_in_s
    if expires is not None and (expires.__class__ is not float or expires - expires != 0.0):
        return json.dumps(e.to_dict(), allow_nan=False)  # not a finite float: let json decide (or refuse)
    inode, uid, cookie = e.inode, e.uid, e.cookie
    return ENTRY_TEMPLATE % (
        e.family, _str(e.laddr), e.lport, _str(e.raddr), e.rport, _str(e.state),
        owners_json(e.owners) if e.owners else "[]",
        "null" if inode is None else inode, "null" if uid is None else uid,
        _str(e.timer), "null" if expires is None else float.__repr__(expires), _LITERALS[e.v6only],
        "null" if cookie is None else cookie,
    )


def _value(value) -> str:
    return json.dumps(value, allow_nan=False)


class DocumentWriter:
    """One JSON object: `head` keys, then one streamed list, then `tail` keys (given at the end, so
    they can count or summarize what was streamed)."""

    def __init__(self, out: TextIO, head: dict) -> None:
        self.out = out
        self.members = 0
        out.write("{")
        for key, value in head.items():
            self._member(key, _value(value))

    def _member(self, key: str, text: str) -> None:
        self.out.write(("" if self.members == 0 else ", ") + encode_str(key) + ": " + text)
        self.members += 1

    def stream(self, key: str, items: Iterable[str]) -> int:
        """Write `key: [items...]`, each item already JSON text; returns how many were written."""
        self._member(key, "[")
        write, count, batch = self.out.write, 0, []
        for item in items:
            batch.append(item)
            if len(batch) == BATCH:
                write((", " if count else "") + ", ".join(batch))
                count += len(batch)
                batch = []
        if batch:
            write((", " if count else "") + ", ".join(batch))
            count += len(batch)
        write("]")
        return count

    def close(self, tail: dict) -> None:
        for key, value in tail.items():
            self._member(key, _value(value))
        self.out.write("}\n")
        self.out.flush()
