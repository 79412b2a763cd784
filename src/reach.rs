//! Which objects an object names: the edges that `fsck` (and, later, `gc`) follow from
//! refs. Only the store's own structures are read — `log` nodes (`parent`, `batch`) and
//! `dlq` snapshots (`parent`, `shards`, each item's `object`), `checkpoint`s (`parent`,
//! `base`, `spec`, `items`) — never user data, so a
//! 64-hex string inside an event or an item is not mistaken for a link.

use serde_json::Value;

use crate::object::{Object, ObjectId, ObjectType};

/// Keys whose string value is a link.
const LINK_KEYS: [&str; 3] = ["parent", "batch", "object"];

const CHECKPOINT_KEYS: [&str; 5] = ["parent", "base", "spec", "items", "original"];

/// The objects `object` names, in the order found.
pub fn links(object: &Object) -> Vec<ObjectId> {
    if !matches!(
        object.kind,
        ObjectType::Log | ObjectType::Dlq | ObjectType::Checkpoint
    ) {
        return Vec::new();
    }
    let Ok(value) = serde_json::from_slice::<Value>(&object.payload) else {
        return Vec::new();
    };
    if object.kind == ObjectType::Checkpoint {
        // A checkpoint names its parent, its nearest full checkpoint, the job's spec, its
        // work-item list and (imported ones) the original file.
        return CHECKPOINT_KEYS
            .iter()
            .filter_map(|k| value.get(*k)?.as_str()?.parse().ok())
            .collect();
    }
    let mut out = Vec::new();
    collect(&value, &mut out);
    out
}

fn collect(value: &Value, out: &mut Vec<ObjectId>) {
    let Value::Object(map) = value else { return };
    for (key, v) in map {
        match v {
            Value::String(s) if LINK_KEYS.contains(&key.as_str()) => {
                if let Ok(id) = s.parse() {
                    out.push(id);
                }
            }
            // A snapshot's shards: {"3f": id, …}.
            Value::Object(shards) if key == "shards" => {
                out.extend(
                    shards
                        .values()
                        .filter_map(|s| s.as_str()?.parse::<ObjectId>().ok()),
                );
            }
            // A log node's summaries hold no links; a shard's items hold `object`s.
            Value::Object(items) if key == "items" => {
                for item in items.values() {
                    collect(item, out);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_store_links_only() {
        let a = ObjectId::hash(ObjectType::Blob, b"a");
        let b = ObjectId::hash(ObjectType::Blob, b"b");
        let node = Object {
            kind: ObjectType::Log,
            payload: format!(r#"{{"parent":"{a}","batch":"{b}","total":{{"count":1}}}}"#)
                .into_bytes(),
        };
        let mut found = links(&node);
        found.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(found, want);
        let shard = Object {
            kind: ObjectType::Dlq,
            payload: format!(
                r#"{{"shard":"3f","items":{{"i1":{{"object":"{a}","error_signature":"{b}"}}}}}}"#
            )
            .into_bytes(),
        };
        assert_eq!(links(&shard), vec![a]);
        let item = Object {
            kind: ObjectType::Item,
            payload: format!(r#"{{"parent":"{a}"}}"#).into_bytes(),
        };
        assert!(links(&item).is_empty());
        let root = Object {
            kind: ObjectType::Dlq,
            payload: format!(r#"{{"parent":null,"items":2,"shards":{{"00":"{a}","ff":"{b}"}}}}"#)
                .into_bytes(),
        };
        assert_eq!(links(&root), vec![a, b]);
    }
}
