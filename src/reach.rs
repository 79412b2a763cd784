//! Which objects an object names: the edges that `gc`, `fsck` and `store push/pull` follow
//! from refs. Only the store's own structures are read — `log` nodes (`parent`, `batch`),
//! `dlq` roots (`parent`, `shards`) and shards (each item's `object`), `checkpoint`s
//! (`parent`, `base`, `spec`, `items`, `original`) — each declared by the type that defines
//! the format, never user data, so a 64-hex string inside an event or an item is not
//! mistaken for a link.

use crate::store::object::{Object, ObjectId, ObjectType};

/// The objects `object` names: each stored format declares its own links next to its
/// type ([`crate::events::LogNode::links`], [`crate::dlq::links`],
/// [`crate::state::Checkpoint::links`]); other types name nothing.
pub fn links(object: &Object) -> Vec<ObjectId> {
    match object.kind {
        ObjectType::Log => crate::events::LogNode::links(&object.payload),
        ObjectType::Dlq => crate::dlq::links(&object.payload),
        ObjectType::Checkpoint => crate::state::Checkpoint::links(&object.payload),
        _ => Vec::new(),
    }
}

/// Every string in `value` that is an object id, in any field: what the types' tests
/// compare their declared links with.
#[cfg(test)]
pub(crate) fn ids_in(value: &serde_json::Value, out: &mut Vec<ObjectId>) {
    match value {
        serde_json::Value::String(s) => out.extend(s.parse::<ObjectId>().ok()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| ids_in(v, out)),
        serde_json::Value::Object(m) => m.values().for_each(|v| ids_in(v, out)),
        _ => {}
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
