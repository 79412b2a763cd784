#!/usr/bin/env python3
"""The event bench's 8-writer row alone, with each process's CPU.

    cargo build --release --bench event_log
    python3 benches/writers.py target/release/deps/event_log-HASH [RUNS] [PER] [WRITERS]

Starts WRITERS (8) `event_log --writer-on-go HOME JOB PER` processes (PER: 37,500 events
each) in one new home under /var/tmp, warmed by one untimed job; once all have built
their events and said `ready`, tells them to go. Prints the medians over RUNS (5) of the
wall time from go to the last exit, the slowest process's own time (from its first
event to its logger's shutdown) and the CPU of the whole processes (building their
events included), from `wait4`.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    bench = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 37500
    writers = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    home = tempfile.mkdtemp(dir="/var/tmp", prefix="writers.")
    subprocess.run(
        [bench, "--writer", home, "warm-up", str(per)], stdout=subprocess.DEVNULL, check=True
    )
    walls, inner, cpus = [], [], []
    for run in range(runs):
        procs = [
            subprocess.Popen(
                [bench, "--writer-on-go", home, f"job-{run}", str(per)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(writers)
        ]
        for p in procs:
            assert p.stdout.readline() == b"ready\n"
        start = time.monotonic()
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        own, cpu = [], 0.0
        for p in procs:
            _, status, usage = os.wait4(p.pid, 0)
            assert status == 0
            own.append(float(p.stdout.read().decode().strip()))
            cpu += usage.ru_utime + usage.ru_stime
        walls.append(time.monotonic() - start)
        inner.append(max(own))
        cpus.append(cpu)
    ms = lambda xs: statistics.median(xs) * 1000
    print(
        f"{writers} writers of {per}: wall {ms(walls):.0f} ms, slowest process "
        f"{ms(inner):.0f} ms, CPU of the processes {ms(cpus):.0f} ms (home {home})"
    )


if __name__ == "__main__":
    main()
