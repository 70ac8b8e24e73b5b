"""Exit 0 when Jaeger's /api/traces answer holds one trace with the tls.handshake spans of both
the sender and the receiver (the e2e-kind workflow's proof that traces join across services)."""

from __future__ import annotations

import json
import sys


def both_ends(trace: dict) -> bool:
    services = {pid: process["serviceName"] for pid, process in trace["processes"].items()}
    sides = {services[span["processID"]] for span in trace["spans"]
             if span["operationName"] == "tls.handshake"}
    return {"tlsstorm-sender", "tlsstorm-receiver"} <= sides


def main(path: str) -> int:
    with open(path) as answer:
        traces = json.load(answer).get("data") or []
    found = [trace["traceID"] for trace in traces if both_ends(trace)]
    print(f"{len(traces)} traces, {len(found)} with both handshake spans")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
