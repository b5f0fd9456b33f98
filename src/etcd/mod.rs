//! The key store on etcd (`[store] kind = "etcd"`): clusters, manifests and
//! keys kept in etcd, the keys sealed, shared by every replica and the CLI.
//!
//! Each process keeps a *working copy*: a private directory (0700, on tmpfs
//! where there is one, removed on exit) laid out exactly as a keys dir, which
//! every other module reads and changes as it does a keys dir. This module
//! keeps the copy and etcd in step:
//!
//! - `client`: the connection, with a deadline on every call;
//! - `layout`: which file of a keys dir is which etcd key;
//! - `seal`: keys sealed with AES-256-GCM under the key-encryption key;
//! - `workdir`: the working copy's private directory;
//! - `mirror` (and `mirror::commit`): reads etcd into a working copy, and commits a cluster's
//!   changed files back in one transaction that compares the revisions it
//!   read (a change made meanwhile by another replica or the CLI wins, and
//!   this one is dropped and re-read);
//! - `status`: where the store stands, for `/readyz` and `/metrics`;
//! - `replica`: what a server runs: the watch on the prefix, the election
//!   that picks the one replica that rotates, and the commits of its changes.
//!
//! ```text
//! <prefix>/clusters/<id>          a runtime cluster's entry (JSON)
//! <prefix>/recreated/<id>         when it last got new keys
//! <prefix>/keys/<id>/manifest     its manifest (JSON)
//! <prefix>/keys/<id>/kid/<kid>    one key, sealed
//! <prefix>/leader                 the rotation lease's holder
//! ```
//!
//! Imports `config` (the [store] settings), `keys::store` and
//! `keys::registry` (the working copy is a keys dir) and `fsutil`; nothing
//! of `issuer`, `http`, `server` or `fleet`.

pub mod client;
pub mod layout;
pub mod mirror;
pub mod replica;
pub mod seal;
pub mod status;
pub mod workdir;

pub use client::{Etcd, EtcdError};
pub use mirror::Mirror;
pub use replica::Replica;
pub use seal::{Kek, Keyring, SealError};
pub use status::StoreStatus;
