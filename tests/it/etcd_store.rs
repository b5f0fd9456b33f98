//! The key store on etcd (#15) against a real 3-member etcd cluster
//! (Debian's etcd-server, `harness/etcd.rs`): the harness itself first, then
//! two replicas and the CLI on one cluster.

use crate::harness::EtcdCluster;

#[test]
fn etcd_harness_three_members_survive_one_loss() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let put = |etcd: &EtcdCluster, key: &str, value: &str| {
        let (status, out, err) = etcd.etcdctl(&["put", key, value]);
        assert!(status.success(), "put {key}: {out}{err}");
    };
    put(&etcd, "/smoke/a", "one");
    assert_eq!(
        etcd.get_prefix("/smoke/"),
        [("/smoke/a".to_owned(), b"one".to_vec())]
    );

    // One member lost: the other two are a quorum.
    etcd.stop_member(0);
    put(&etcd, "/smoke/b", "two");
    assert_eq!(etcd.get_prefix("/smoke/").len(), 2);

    // Back on its data, it catches up with what it missed: a linearizable
    // read through it alone sees the write made while it was down.
    etcd.start_member(0);
    etcd.wait_healthy();
    let first = etcd.endpoints()[0].clone();
    let (status, out, err) = etcd.etcdctl(&[
        "--endpoints",
        &first,
        "get",
        "/smoke/b",
        "--print-value-only",
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "two");

    // All three gone: etcdctl fails.
    etcd.stop_all();
    let (status, out, err) = etcd.etcdctl(&["get", "/smoke/a"]);
    assert!(
        !status.success(),
        "etcdctl answered with every member stopped: {out}"
    );
    assert!(!err.is_empty());

    // All back, nothing lost; a compaction makes older revisions unreadable.
    etcd.start_all();
    etcd.wait_healthy();
    let before = etcd.revision();
    put(&etcd, "/smoke/a", "three");
    assert_eq!(
        etcd.get_prefix("/smoke/"),
        [
            ("/smoke/a".to_owned(), b"three".to_vec()),
            ("/smoke/b".to_owned(), b"two".to_vec())
        ]
    );
    assert!(etcd.compact_now() > before);
    let (status, _, err) = etcd.etcdctl(&["get", "/smoke/a", "--rev", &before.to_string()]);
    assert!(
        !status.success() && err.contains("compacted"),
        "a read of a compacted revision: {err}"
    );
}
