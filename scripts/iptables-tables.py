#!/usr/bin/env python3
"""The nftables tables that iptables-nft creates on first use (ip/ip6 filter, nat, mangle, raw,
security), recorded before the local cluster starts and removed after it stops when they were
not there before and hold nothing of anyone's: only built-in chains, each accepting, no rule.

  iptables-tables.py record FILE      the tables there now, one "family name" a line
  iptables-tables.py remove-new FILE  remove the empty ones FILE does not list

A host where nothing had used iptables has none of them (issue 30): `cluster-down` must not
leave them behind. Only nft's JSON output is read; nothing else on the host is touched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

FAMILIES = ("ip", "ip6")
NAMES = ("filter", "nat", "mangle", "raw", "security")
BUILT_IN_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}


def nft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False)


def tables() -> set[tuple[str, str]]:
    listed = nft("-j", "list", "tables")
    if listed.returncode != 0:
        raise SystemExit(f"iptables-tables: nft list tables failed: {listed.stderr.strip()}")
    return {(item["table"]["family"], item["table"]["name"])
            for item in json.loads(listed.stdout)["nftables"] if "table" in item}


def empty(family: str, name: str) -> bool:
    """Built-in chains with policy accept and nothing else: no rule, set, map or user chain."""
    listed = nft("-j", "list", "table", family, name)
    if listed.returncode != 0:
        return False
    for item in json.loads(listed.stdout)["nftables"]:
        kind, = item.keys()
        if kind in ("metainfo", "table"):
            continue
        chain = item.get("chain")
        if chain is None or chain["name"] not in BUILT_IN_CHAINS or \
                chain.get("policy", "accept") != "accept":
            return False
    return True


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "remove-new"):
        raise SystemExit(__doc__)
    action, file = sys.argv[1], Path(sys.argv[2])
    if shutil.which("nft") is None:
        raise SystemExit("iptables-tables: nft is not installed (Debian: nftables)")
    present = {table for table in tables() if table[0] in FAMILIES and table[1] in NAMES}
    if action == "record":
        file.write_text("".join(f"{family} {name}\n" for family, name in sorted(present)))
        return
    before = {tuple(line.split()) for line in file.read_text().splitlines() if line.strip()}
    for family, name in sorted(present - before):
        if empty(family, name):
            deleted = nft("delete", "table", family, name)
            if deleted.returncode != 0:
                print(f"iptables-tables: could not delete {family} {name}: "
                      f"{deleted.stderr.strip()}", file=sys.stderr)
        else:
            print(f"iptables-tables: {family} {name} holds rules now: left as it is",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
