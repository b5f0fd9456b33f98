//! The flags of `workload-issuer store new-kek|migrate|rewrap`: the etcd
//! store's key-encryption key and moving clusters in and out of it
//! (through `commands::store`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use super::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write a new key-encryption key (32 random bytes, mode 0600) for [store] kek_file.
    /// Never overwrites a file.
    NewKek {
        /// Where to write it.
        file: PathBuf,
    },
    /// Copy every cluster, manifest and key of a keys dir into the etcd store of --config
    /// (--from-keys-dir), or of the etcd store into a keys dir (--to-keys-dir). Kids and
    /// states are kept; running it again changes nothing.
    Migrate(MigrateArgs),
    /// Re-seal every key in the etcd store not yet under --new-kek; no kid changes. The
    /// config's kek_file and extra_kek_files must open them (deploy/etcd.md, "Replacing the
    /// KEK": run it once every replica seals under the new KEK, the old one an extra).
    Rewrap {
        #[command(flatten)]
        config: ConfigArgs,
        /// The new key-encryption key (made with `store new-kek`); it may be kek_file itself.
        #[arg(long, value_name = "FILE")]
        new_kek: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("direction").required(true).args(["from_keys_dir", "to_keys_dir"])))]
pub struct MigrateArgs {
    /// The config whose [store] is the etcd store.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The keys dir to copy into etcd.
    #[arg(long, value_name = "DIR")]
    pub from_keys_dir: Option<PathBuf>,
    /// The keys dir to copy etcd's clusters into (made if missing).
    #[arg(long, value_name = "DIR")]
    pub to_keys_dir: Option<PathBuf>,
}
