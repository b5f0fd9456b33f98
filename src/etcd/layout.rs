//! Which file of a keys dir is which etcd key, and back.
//!
//! Only the files that make up clusters are kept in etcd: a runtime
//! cluster's entry and recreate marker, each cluster's manifest and key
//! files. The lock, the registry's generation counter and temp files are the
//! working copy's own.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use crate::k8s::names::is_dns_label;

/// A file of a keys dir that etcd holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    /// `<id>/<kid>.pem`: sealed in etcd.
    Key(String, String),
    /// `<id>/manifest.json`.
    Manifest(String),
    /// `.clusters/<id>.recreated`.
    Marker(String),
    /// `.clusters/<id>.json`.
    Entry(String),
}

/// Whether a kid can name a file and an etcd key as it is (the kids this
/// server makes are base64url).
fn is_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 128
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Item {
    pub fn cluster(&self) -> &str {
        match self {
            Item::Key(id, _) | Item::Manifest(id) | Item::Marker(id) | Item::Entry(id) => id,
        }
    }

    /// The order to write in: keys before the manifest that lists them, the
    /// manifest before the entry that makes the cluster served. Removals go
    /// the other way.
    pub fn rank(&self) -> u8 {
        match self {
            Item::Key(..) => 0,
            Item::Manifest(_) => 1,
            Item::Marker(_) => 2,
            Item::Entry(_) => 3,
        }
    }

    /// Whether its registry (and not only the key store) changes with it.
    pub fn in_registry(&self) -> bool {
        matches!(self, Item::Marker(_) | Item::Entry(_))
    }

    /// Its path below the keys dir.
    pub fn rel(&self) -> String {
        match self {
            Item::Key(id, kid) => format!("{id}/{kid}.pem"),
            Item::Manifest(id) => format!("{id}/manifest.json"),
            Item::Marker(id) => format!(".clusters/{id}.recreated"),
            Item::Entry(id) => format!(".clusters/{id}.json"),
        }
    }

    /// Its etcd key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        match self {
            Item::Key(id, kid) => format!("{prefix}/keys/{id}/kid/{kid}"),
            Item::Manifest(id) => format!("{prefix}/keys/{id}/manifest"),
            Item::Marker(id) => format!("{prefix}/recreated/{id}"),
            Item::Entry(id) => format!("{prefix}/clusters/{id}"),
        }
    }

    /// The item an etcd key under `prefix` names; `None` for keys of
    /// anything else (the leader key, keys of a newer version).
    pub fn from_key(prefix: &str, key: &[u8]) -> Option<Item> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let item = match parts.as_slice() {
            ["clusters", id] => Item::Entry((*id).into()),
            ["recreated", id] => Item::Marker((*id).into()),
            ["keys", id, "manifest"] => Item::Manifest((*id).into()),
            ["keys", id, "kid", kid] if is_kid(kid) => Item::Key((*id).into(), (*kid).into()),
            _ => return None,
        };
        is_dns_label(item.cluster()).then_some(item)
    }
}

/// The etcd key range of everything under `prefix`: `[start, end)`.
pub fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = format!("{prefix}/").into_bytes();
    let mut end = start.clone();
    // '/' + 1 = '0': every key that starts with "<prefix>/".
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (start, end)
}

/// The etcd key ranges holding one cluster's items.
pub fn cluster_keys(prefix: &str, id: &str) -> [(Vec<u8>, Vec<u8>); 3] {
    let keys = prefix_range(&format!("{prefix}/keys/{id}"));
    let single = |item: Item| {
        let k = item.key(prefix).into_bytes();
        (k, Vec::new())
    };
    [
        keys,
        single(Item::Entry(id.into())),
        single(Item::Marker(id.into())),
    ]
}

fn read_opt(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// One cluster's items in a keys dir, with their bytes.
pub fn read_cluster(root: &Path, id: &str) -> io::Result<BTreeMap<Item, Vec<u8>>> {
    let mut items = BTreeMap::new();
    for item in [
        Item::Manifest(id.into()),
        Item::Marker(id.into()),
        Item::Entry(id.into()),
    ] {
        if let Some(bytes) = read_opt(&root.join(item.rel()))? {
            items.insert(item, bytes);
        }
    }
    let dir = root.join(id);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(items),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(kid) = name.to_str().and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        if !is_kid(kid) {
            continue;
        }
        let item = Item::Key(id.into(), kid.into());
        if let Some(bytes) = read_opt(&root.join(item.rel()))? {
            items.insert(item, bytes);
        }
    }
    Ok(items)
}

/// The ids of every cluster a keys dir holds anything of.
pub fn cluster_ids(root: &Path) -> io::Result<Vec<String>> {
    let mut ids = std::collections::BTreeSet::new();
    let list = |dir: &Path| -> io::Result<Vec<String>> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    };
    for name in list(root)? {
        if is_dns_label(&name) && root.join(&name).is_dir() {
            ids.insert(name);
        }
    }
    for name in list(&root.join(".clusters"))? {
        let id = name
            .strip_suffix(".json")
            .or_else(|| name.strip_suffix(".recreated"));
        if let Some(id) = id.filter(|id| is_dns_label(id)) {
            ids.insert(id.to_owned());
        }
    }
    Ok(ids.into_iter().collect())
}

/// Every item of a keys dir.
pub fn read_all(root: &Path) -> io::Result<BTreeMap<Item, Vec<u8>>> {
    let mut all = BTreeMap::new();
    for id in cluster_ids(root)? {
        all.extend(read_cluster(root, &id)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_maps_to_one_key_and_back() {
        let items = [
            Item::Key("demo".into(), "Ab_-9".into()),
            Item::Manifest("demo".into()),
            Item::Marker("demo".into()),
            Item::Entry("demo".into()),
        ];
        for item in items {
            let key = item.key("/wi");
            assert_eq!(
                Item::from_key("/wi", key.as_bytes()),
                Some(item.clone()),
                "{key}"
            );
            assert!(key.as_bytes() >= prefix_range("/wi").0.as_slice());
            assert!(key.as_bytes() < prefix_range("/wi").1.as_slice());
        }
        for other in [
            "/wi/leader",
            "/wi/keys/Demo/manifest",
            "/wi/keys/demo/kid/a.b",
            "/wix/clusters/a",
            "/wi/keys/../manifest",
        ] {
            assert_eq!(Item::from_key("/wi", other.as_bytes()), None, "{other}");
        }
    }
}
