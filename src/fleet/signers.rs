//! The external-signer sockets of the clusters that name one: bound at
//! start, and bound, moved or closed as the config's clusters change.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::Fleet;
use crate::{externaljwt, signer};

/// A cluster's external-signer socket being served.
pub(super) struct SignerTask {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    /// Serves the external-signer socket of every cluster that names one;
    /// a socket that cannot be had is the cluster's id with the error.
    pub async fn bind_signers(&mut self) -> Result<(), (String, std::io::Error)> {
        let issuers = self.parts.issuers.load_full();
        for cluster in issuers.all() {
            if let Some(at) = &cluster.config.kubernetes_signer {
                let task = self
                    .bind_signer(cluster.id(), at)
                    .await
                    .map_err(|e| (cluster.id().to_owned(), e))?;
                self.signers.insert(cluster.id().to_owned(), task);
            }
        }
        Ok(())
    }

    pub(super) async fn bind_signer(
        &self,
        id: &str,
        at: &crate::config::SignerSocket,
    ) -> std::io::Result<SignerTask> {
        let gid = match &at.group {
            Some(group) => Some(externaljwt::group_id(group)?),
            None => None,
        };
        let socket = externaljwt::bind(&at.path, gid).await?;
        tracing::info!(
            cluster = id,
            mode = if gid.is_some() { "0660" } else { "0600" },
            group = at.group.as_deref().unwrap_or(""),
            "external token signer (ExternalJWTSigner v1, v1alpha1) on unix://{}",
            at.path.display()
        );
        let backend = Arc::new(signer::LocalSigner::new(
            id.to_owned(),
            self.parts.issuers.clone(),
            self.parts.signing.clone(),
            self.parts.metrics.clone(),
        ));
        let (stop, mut stopped) = watch::channel(false);
        let cluster = id.to_owned();
        let task = tokio::spawn(async move {
            let served = externaljwt::serve(socket, backend, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(cluster, error = %e, "the external signer stopped");
            }
        });
        Ok(SignerTask {
            path: at.path.clone(),
            stop,
            task,
        })
    }

    pub(super) async fn stop_signer(&mut self, id: &str) {
        if let Some(s) = self.signers.remove(id) {
            let _ = s.stop.send(true);
            let _ = s.task.await;
            tracing::info!(cluster = id, path = %s.path.display(), "external token signer closed");
        }
    }
}
