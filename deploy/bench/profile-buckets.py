#!/usr/bin/env python3
"""Buckets the samples of `perf script` output by the fleetcmd component in their stack.

    perf record -e cpu-clock -F 250 --call-graph dwarf,32768 -o perf.data -- \
        target/release/fleetcmd bench --executions 15000 --quiet
    perf script -i perf.data > perf.txt
    deploy/bench/profile-buckets.py perf.txt

Samples of the embedded broker's threads (fleetcmd-mqtt) and of the SQLite writer thread
(fleetcmd-sqlite) count as theirs; any other sample goes to the first component found walking
its stack up from the leaf, so a socket read in a device's client counts as rumqttc, a wake-up
in the scheduler as tokio.
"""
import collections
import re
import sys

COMPONENTS = [
    ("edge", r"fleetcmd_edge"),
    ("shard owners", r"fleetcmd_dispatcher::owner"),
    ("shard client", r"fleetcmd_dispatcher::client"),
    ("dispatcher gRPC API", r"fleetcmd_dispatcher::grpc"),
    ("projector", r"fleetcmd_projector"),
    ("registry", r"fleetcmd_registry"),
    ("load generator", r"fleetcmd::bench"),
    ("in-process bus", r"fleetcmd_adapters::embedded::bus"),
    ("SQLite reads", r"fleetcmd_adapters::embedded::sqlite"),
    ("rumqttc", r"rumqttc"),
    ("gRPC transport", r"(tonic|h2::|hyper)"),
    ("tokio runtime", r"tokio::"),
]
THREADS = [("embedded broker", "fleetcmd-mqtt"), ("SQLite writer", "fleetcmd-sqlite")]


def bucket(sample: list[str]) -> str:
    for name, thread in THREADS:
        if sample[0].startswith(thread):
            return name
    for frame in sample[1:]:
        for name, pattern in COMPONENTS:
            if re.search(pattern, frame):
                return name
    return "other"


def main() -> None:
    counts: collections.Counter[str] = collections.Counter()
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        for block in f.read().split("\n\n"):
            lines = block.strip().split("\n")
            if lines and lines[0].strip():
                counts[bucket(lines)] += 1
    total = sum(counts.values()) or 1
    for name, n in counts.most_common():
        print(f"{name:22s} {100 * n / total:5.1f} %")


if __name__ == "__main__":
    main()
