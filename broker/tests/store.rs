//! The store keeps the old or the new value across a crash, never half of one, and
//! never touches anything outside its folder.
#![allow(clippy::unwrap_used)]

use cvm_broker::resource_path::ResourcePath;
use cvm_broker::store::{Document, MAX_RESOURCE, Store, StoreError};

fn path(p: &str) -> ResourcePath {
    ResourcePath::parse(p).unwrap()
}

#[test]
fn put_get_replace_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let p = path("cvm/state/key");
    assert_eq!(store.get_resource(&p).unwrap(), None);
    store.put_resource(&p, b"one").unwrap();
    store.put_resource(&p, b"two").unwrap();
    assert_eq!(store.get_resource(&p).unwrap().unwrap(), b"two");
    assert!(store.remove_resource(&p).unwrap());
    assert!(!store.remove_resource(&p).unwrap());
    assert_eq!(store.get_resource(&p).unwrap(), None);

    store
        .put_document(Document::ResourcePolicy, b"package policy")
        .unwrap();
    assert_eq!(
        store
            .get_document(Document::ResourcePolicy)
            .unwrap()
            .unwrap(),
        b"package policy"
    );
    assert_eq!(store.get_document(Document::ReferenceValues).unwrap(), None);
}

#[test]
fn a_crash_mid_write_leaves_the_old_value_and_no_debris() {
    let dir = tempfile::tempdir().unwrap();
    let p = path("cvm/state/key");
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_resource(&p, b"committed").unwrap();
    }
    // What a crash between write and rename leaves: a partial temporary file.
    let file_dir = dir.path().join("resources/cvm/state");
    std::fs::write(file_dir.join("key~tmp~999-0"), b"half a new va").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get_resource(&p).unwrap().unwrap(), b"committed");
    let left: Vec<_> = std::fs::read_dir(&file_dir).unwrap().collect();
    assert_eq!(left.len(), 1, "stale temporary file removed on open");
}

#[test]
fn limits_are_named_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let p = path("cvm/big/one");
    let err = store
        .put_resource(&p, &vec![0; MAX_RESOURCE + 1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                what: "resource",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.get_resource(&p).unwrap(), None);
    // Paths that could leave the folder never become ResourcePaths.
    assert!(ResourcePath::parse("../../etc/passwd").is_err());
    assert!(ResourcePath::parse("a/b/..").is_err());
}
