#!/usr/bin/env python3
"""Times shell commands run in turn, RUNS rounds, and prints each one's median: wall time,
and the CPU time (user + system) of the command's processes.

    python3 benches/alternate.py RUNS LABEL 'COMMAND' LABEL 'COMMAND' ...

Used to measure a change: the old binary and the new one (and a baseline such as
`zstd -dc`) alternate on the same data, so a disk that drifts during the run moves
them all alike. Each command's standard output goes to /dev/null; a failing command
stops the run.
"""
import resource
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2 != 0:
        sys.exit(__doc__)
    runs = int(sys.argv[1])
    pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
    times = {label: [] for label, _ in pairs}
    cpus = {label: [] for label, _ in pairs}
    for _ in range(runs):
        for label, command in pairs:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[label].append(after.ru_utime + after.ru_stime
                               - before.ru_utime - before.ru_stime)
    for label, _ in pairs:
        t = times[label]
        print(f"{label}: median {statistics.median(t) * 1000:.1f} ms, "
              f"min {min(t) * 1000:.1f} ms, "
              f"CPU median {statistics.median(cpus[label]) * 1000:.1f} ms ({runs} runs)")


if __name__ == "__main__":
    main()
