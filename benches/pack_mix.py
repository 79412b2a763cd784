#!/usr/bin/env python3
"""Pack sizes on a home of mixed objects (issue 25), made through the command line:
event batches of 1 to 30 events and their log nodes over 30 jobs, and 600 DLQ failures
(items, shards, snapshots) - 4,200 objects. Runs `prodigy gc` and prints the pack and
index sizes and whether the pack has a dictionary.

    python3 benches/pack_mix.py target/release/prodigy [HOME]

HOME (default: a new directory under /var/tmp) is kept, so that another build's gc can be
run on a copy of it.
"""
import glob, json, os, random, struct, subprocess, sys, tempfile, uuid

exe = os.path.abspath(sys.argv[1])
home = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="pack-mix-", dir="/var/tmp")
env = dict(os.environ, PRODIGY_HOME=home)
rng = random.Random(7)


def run(args, data=b""):
    subprocess.run([exe] + args, input=data, env=env, check=True, stdout=subprocess.DEVNULL)


if not os.path.isdir(os.path.join(home, "objects")):
    kinds = ["agent_started", "agent_progress", "agent_completed", "agent_failed", "item_processed"]
    for job in range(30):
        jid = f"mapreduce-2025010{job % 9}_{143000 + job}"
        for append in range(40):
            lines = []
            for _ in range(rng.randint(1, 30)):
                item = rng.randint(0, 5000)
                ev = {"event_type": rng.choice(kinds), "job_id": jid, "agent_id": f"agent-{rng.randint(0, 8)}-{item}"}
                k = ev["event_type"]
                if k == "agent_started":
                    ev.update(item_id=str(item), worktree=f"session-{uuid.UUID(int=rng.getrandbits(128))}", attempt=rng.randint(1, 3))
                elif k == "agent_progress":
                    ev.update(step=rng.choice(["analyze", "fix", "test", "commit"]), progress_pct=rng.choice([25.0, 50.0, 75.0]))
                elif k == "agent_completed":
                    ev.update(duration=[rng.randint(1, 300), rng.randint(0, 999999999)], commits=["%040x" % rng.getrandbits(160) for _ in range(rng.randint(0, 2))])
                elif k == "agent_failed":
                    ev.update(error=f"command `cargo test -p crate{item % 17}` failed with exit code {rng.randint(1, 101)}", retry_eligible=rng.random() < 0.5)
                else:
                    ev.update(item_id=str(item), duration_ms=rng.randint(10, 90000))
                lines.append(json.dumps(ev))
            run(["events", "append", "--repo", "api", "--job", jid], ("\n".join(lines) + "\n").encode())
    for n in range(600):
        item = rng.randint(0, 5000)
        err = rng.choice([
            f"command `cargo test -p crate{item % 17}` failed with exit code {rng.randint(1, 101)}",
            f"timeout after {rng.randint(30, 600)}s in /tmp/worktrees/session-{uuid.UUID(int=rng.getrandbits(128))}/src/lib.rs",
            f"merge conflict in src/module_{item % 40}.rs",
        ])
        data = json.dumps({"path": f"src/module_{item % 40}.rs", "priority": rng.randint(1, 5), "line": rng.randint(1, 900)})
        run(["dlq", "add", "--repo", "api", "--job", f"mapreduce-2025010{n % 3}_14300{n % 3}",
             "--item", f"item-{item}", "--error", err, "--data", data])
    print(f"home: {home}")

run(["gc"])
for idx in sorted(glob.glob(os.path.join(home, "objects/pack/*.idx"))):
    pack = idx[:-4] + ".pack"
    head = open(pack, "rb").read(12)
    dictionary = struct.unpack("<I", head[8:12])[0] if head[:8] == b"PRODPAK2" else None
    print(f"{os.path.basename(pack)}: pack {os.path.getsize(pack)} + index {os.path.getsize(idx)} "
          f"= {os.path.getsize(pack) + os.path.getsize(idx)} bytes; "
          + ("version 1" if dictionary is None else f"version 2, dictionary {dictionary} bytes"))
