//! Many real processes updating one ref by compare-and-swap.

use std::collections::HashSet;

use prodigy::store::object::ObjectId;

use crate::common::Env;
use crate::worker;

#[test]
fn eight_processes_two_hundred_cas_updates_each() {
    let env = Env::new();
    let name = "state/api/contended";
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let ack = env.dir.path().join(format!("ack-{w}"));
            let child = worker::spawn(
                "cas",
                &env.home(),
                &ack,
                &[
                    ("PRODIGY_IT_REF", name.to_owned()),
                    ("PRODIGY_IT_ID", w.to_string()),
                ],
            );
            (child, ack)
        })
        .collect();
    let mut acked = HashSet::new();
    for (mut child, ack) in workers {
        assert!(child.wait().unwrap().success());
        let ids: Vec<ObjectId> = std::fs::read_to_string(ack)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 200);
        acked.extend(ids);
    }
    assert_eq!(acked.len(), 1600);
    let refs = env.store();
    let log = refs.log(&name.parse().unwrap()).unwrap();
    assert!(log.bad_lines.is_empty() && !log.torn_tail);
    assert_eq!(log.entries.len(), 1600);
    assert!(log.entries[0].old.is_zero());
    for pair in log.entries.windows(2) {
        assert_eq!(pair[1].old, pair[0].new, "a lost update");
    }
    let news: HashSet<ObjectId> = log.entries.iter().map(|e| e.new).collect();
    assert_eq!(news, acked);
    assert_eq!(
        refs.read(&name.parse().unwrap()).unwrap(),
        Some(log.entries[1599].new)
    );
    let fsck = env.run(&["fsck"], b"");
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}
