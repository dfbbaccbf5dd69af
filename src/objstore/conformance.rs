//! The [`ObjectStore`] contract as one check, run against every implementation: the folder
//! store in unit tests, S3 against the lab's RADOS Gateway (`tests/objstore_lab.rs`).

use super::{ObjectStore, StoreError};

/// Exercises `store` under keys starting with `base/` (which must hold no objects), and
/// removes what it wrote. Panics with a message naming the broken rule.
pub fn check_store(store: &dyn ObjectStore, base: &str) {
    let key = |k: &str| format!("{base}/{k}");
    assert!(
        store
            .list(base)
            .expect("list of an empty prefix")
            .is_empty(),
        "{base}/ is not empty in {}",
        store.describe()
    );
    // Put, get, head; an empty object and one with every byte value.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    store
        .put(&key("blocks/aa/aa01"), bytes.clone())
        .expect("put");
    store
        .put(&key("blocks/ab/ab02"), Vec::new())
        .expect("put empty");
    assert_eq!(store.get(&key("blocks/aa/aa01")).expect("get"), bytes);
    assert_eq!(store.get(&key("blocks/ab/ab02")).expect("get empty"), b"");
    assert_eq!(
        store.head(&key("blocks/aa/aa01")).expect("head"),
        Some(70_000)
    );
    assert_eq!(store.head(&key("blocks/ab/ab02")).expect("head"), Some(0));
    // A put replaces the whole object.
    store
        .put(&key("manifest"), b"first, longer".to_vec())
        .expect("put");
    store
        .put(&key("manifest"), b"second".to_vec())
        .expect("replace");
    assert_eq!(store.get(&key("manifest")).expect("get"), b"second");
    // Missing objects.
    assert_eq!(store.head(&key("nothing")).expect("head of missing"), None);
    match store.get(&key("nothing")) {
        Err(StoreError::NotFound { key: k, .. }) => assert_eq!(k, key("nothing")),
        other => panic!("get of a missing object gave {other:?}"),
    }
    // Listing: sorted, whole-segment prefixes, sizes.
    let listed: Vec<(String, u64)> = store
        .list(base)
        .expect("list")
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        listed,
        [
            (key("blocks/aa/aa01"), 70_000),
            (key("blocks/ab/ab02"), 0),
            (key("manifest"), 6)
        ]
    );
    let blocks: Vec<String> = store
        .list(&key("blocks"))
        .expect("list blocks")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(blocks, [key("blocks/aa/aa01"), key("blocks/ab/ab02")]);
    // Bad keys are refused before anything is sent.
    for bad in ["", "/abs", "a//b", "../up"] {
        assert!(
            matches!(store.put(bad, Vec::new()), Err(StoreError::BadKey { .. })),
            "put {bad:?} was not refused"
        );
    }
    // Delete, twice.
    for k in ["blocks/aa/aa01", "blocks/ab/ab02", "manifest"] {
        store.delete(&key(k)).expect("delete");
        store.delete(&key(k)).expect("delete of a missing object");
    }
    assert!(
        store.list(base).expect("list").is_empty(),
        "objects left after delete"
    );
}
