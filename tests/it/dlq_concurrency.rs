//! Six real processes adding failures for 50 overlapping items at once.

use crate::common::Env;
use crate::worker;

#[test]
fn six_processes_add_failures_for_overlapping_items() {
    let env = Env::new();
    let children: Vec<_> = (0..6)
        .map(|w| {
            worker::spawn(
                "dlq",
                &env.home(),
                &env.dir.path().join(format!("ack-{w}")),
                &[("PRODIGY_IT_ID", w.to_string())],
            )
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let refs = env.store();
    let queue = prodigy::dlq::DeadLetterQueue::new(refs.clone(), "api", "contended").unwrap();
    let snapshot = queue.snapshot().unwrap();
    assert_eq!(snapshot.items.len(), 50);
    let mut failures = 0;
    for id in snapshot.items.keys() {
        let item = queue.get(id).unwrap().unwrap();
        assert_eq!(item.failure_count, 6, "{id}");
        assert_eq!(item.failure_history.len(), 6);
        let mut agents: Vec<_> = item
            .failure_history
            .iter()
            .filter_map(|f| f.agent_id.clone())
            .collect();
        agents.sort();
        assert_eq!(
            agents,
            (0..6).map(|w| format!("worker-{w}")).collect::<Vec<_>>(),
            "{id}"
        );
        let attempts: Vec<u32> = item.failure_history.iter().map(|f| f.attempt).collect();
        assert_eq!(attempts, (1..=6).collect::<Vec<_>>());
        failures += item.failure_count;
    }
    assert_eq!(failures, 300);
    // No snapshot lost: one reflog entry per add, each building on the one before.
    let log = refs.log(queue.name()).unwrap();
    assert_eq!(log.entries.len(), 300);
    for pair in log.entries.windows(2) {
        assert_eq!(pair[1].old, pair[0].new);
    }
    let mut chain = 0;
    let mut next = refs.read(queue.name()).unwrap();
    while let Some(id) = next {
        let object = refs.objects().read(&id).unwrap();
        let root: serde_json::Value = serde_json::from_slice(&object.payload).unwrap();
        next = root["parent"].as_str().map(|p| p.parse().unwrap());
        chain += 1;
    }
    assert_eq!(chain, 300);
}
