//! Clients for target clusters: the local one, or a remote one from its kubeconfig Secret.

use orrery_runtime::Lock;
use std::collections::HashMap;

use crd_types::hierarchy::Cluster;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use super::made::Target;
use crate::plan::{Readiness, as_applied, tenancy};

/// How long a request to a remote cluster may wait for its answer.
const REMOTE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Builds and keeps one client per remote Cluster, rebuilt when its Secret changes.
pub(super) struct Targets {
    local: Client,
    /// Cluster name → (the Secret's resourceVersion it was built from, the client).
    remote: Lock<HashMap<String, (String, Client)>>,
}

impl Targets {
    pub(super) fn new(local: Client) -> Self {
        Targets {
            local,
            remote: Lock::default(),
        }
    }

    /// The target `cluster` stands for, or why there is none (as the readiness to report).
    pub(super) async fn target_for(&self, cluster: &Cluster) -> Result<Target, Readiness> {
        let client = self.remote_client(cluster).await?;
        Ok(match client {
            Some(client) => Target { client, local: false },
            None => Target {
                client: self.local.clone(),
                local: true,
            },
        })
    }

    /// A client for `cluster` when it is remote (`None` for this cluster), or why there is none.
    async fn remote_client(&self, cluster: &Cluster) -> Result<Option<Client>, Readiness> {
        // Its policies may choose the kubeconfig (a credentials broker, a freeze on switching).
        let cluster = as_applied(cluster)?;
        let Some(reference) = cluster.spec.kubeconfig_secret_ref.as_ref() else {
            return Ok(None);
        };
        let not_ready = |reason: &str, message: String| Readiness::NotReady {
            reason: reason.into(),
            message,
        };
        let Some(namespace) = reference.namespace.as_deref() else {
            return Err(not_ready(
                "InvalidSecretRef",
                "kubeconfigSecretRef.namespace is required: a Cluster has no namespace of its own".into(),
            ));
        };
        let secret = Api::<Secret>::namespaced(self.local.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(|err| {
                not_ready(
                    "SecretUnreadable",
                    format!("reading Secret {namespace}/{}: {err}", reference.name),
                )
            })?
            .ok_or_else(|| {
                not_ready(
                    "SecretNotFound",
                    format!("Secret {namespace}/{} does not exist", reference.name),
                )
            })?;
        let version = secret.resource_version().unwrap_or_default();
        let name = cluster.name_any();
        if let Some((built_from, client)) = self.remote.lock().get(&name)
            && *built_from == version
        {
            return Ok(Some(client.clone()));
        }
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .ok_or_else(|| {
                not_ready(
                    "SecretKeyNotFound",
                    format!("Secret {namespace}/{} has no key {:?}", reference.name, reference.key),
                )
            })?;
        let invalid = |err: String| {
            not_ready(
                "InvalidKubeconfig",
                format!("Secret {namespace}/{}: {err}", reference.name),
            )
        };
        let text = std::str::from_utf8(&data.0).map_err(|_| invalid("the key's value is not UTF-8 text".into()))?;
        // The parser's words may quote the Secret's content: only that it failed is reported.
        let kubeconfig = Kubeconfig::from_yaml(text)
            .ok()
            .filter(|k| !k.clusters.is_empty())
            .ok_or_else(|| invalid(format!("key {:?} does not hold a kubeconfig", reference.key)))?;
        if let Some(why) = tenancy::kubeconfig_refusal(&kubeconfig) {
            return Err(not_ready(
                "KubeconfigRefused",
                format!("Secret {namespace}/{}: {why}", reference.name),
            ));
        }
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| invalid(e.to_string()))?;
        // Only short requests go there (no watch): one that stalls fails and is retried rather
        // than holding its resource's reconcile for the default five minutes.
        config.read_timeout = Some(REMOTE_READ_TIMEOUT);
        let client = Client::try_from(config).map_err(|e| invalid(e.to_string()))?;
        self.remote.lock().insert(name, (version, client.clone()));
        Ok(Some(client))
    }
}
