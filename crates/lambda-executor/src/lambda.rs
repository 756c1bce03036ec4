//! An executor's parameters, parsed and checked: which child kinds it may make, in which
//! namespace, and where the desired children come from (a sync webhook or CEL templates).

use std::time::Duration;

use crd_types::common::Parameters;
use hierarchy_executor::plan::tenancy::Protected;
use hierarchy_executor::registry::{Executor, Kind, Parameter, ParameterType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::template::Template;

/// The executor whose children a Metacontroller-style sync hook returns.
pub const WEBHOOK: &str = "webhook";
/// The executor whose children CEL templates in its parameters render.
pub const TEMPLATE: &str = "template";

/// Child kinds one resource may declare: each is an admission check of its creator.
pub const MAX_CHILD_RESOURCES: usize = 8;
/// The longest a hook may take to answer.
pub const MAX_TIMEOUT_SECONDS: u64 = 30;
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// How often a resource is synced again when nothing else wakes it.
const DEFAULT_RESYNC_SECONDS: u64 = 60;
const MIN_RESYNC_SECONDS: u64 = 5;
const MAX_RESYNC_SECONDS: u64 = 86_400;

const CHILD_RESOURCES: Parameter = Parameter {
    name: "childResources",
    type_: ParameterType::List,
    description: "the kinds it makes, as [{apiVersion, resource}] (e.g. {apiVersion: v1, resource: configmaps}); its creator must be able to create each in the namespace",
};
const NAMESPACE: Parameter = Parameter {
    name: "namespace",
    type_: ParameterType::String,
    description: "where its children go: an Application's own namespace (the default), required for the cluster-scoped kinds",
};
const RESYNC: Parameter = Parameter {
    name: "resyncPeriodSeconds",
    type_: ParameterType::Integer,
    description: "how often it syncs again when nothing changed (5 to 86400, default 60): children deleted or edited by hand are put back then",
};

const WEBHOOK_PARAMETERS: &[Parameter] = &[
    Parameter {
        name: "url",
        type_: ParameterType::String,
        description: "the sync hook's http(s) URL",
    },
    Parameter {
        name: "service",
        type_: ParameterType::Object,
        description: "instead of url: the hook's Service, as {name, namespace, port, path, protocol}",
    },
    Parameter {
        name: "timeoutSeconds",
        type_: ParameterType::Integer,
        description: "how long to wait for an answer (1 to 30, default 10)",
    },
    Parameter {
        name: "finalize",
        type_: ParameterType::Bool,
        description: "call the hook with `finalizing: true` on deletion until it answers `finalized: true`",
    },
    CHILD_RESOURCES,
    NAMESPACE,
    RESYNC,
];

const TEMPLATE_PARAMETERS: &[Parameter] = &[
    Parameter {
        name: "resources",
        type_: ParameterType::List,
        description: "the children, as [{id, template, includeWhen, readyWhen}]; `${...}` in a template's strings is CEL over `parent`",
    },
    Parameter {
        name: "status",
        type_: ParameterType::Object,
        description: "written into status.executorStatus; `${...}` is CEL over `parent` and each resource's id",
    },
    CHILD_RESOURCES,
    NAMESPACE,
    RESYNC,
];

/// Every executor this controller claims: both, for every hierarchy kind.
pub fn executors() -> Vec<Executor> {
    [Kind::Project, Kind::Cluster, Kind::VirtualCluster, Kind::Application]
        .into_iter()
        .flat_map(|kind| {
            [
                Executor {
                    kind,
                    name: WEBHOOK,
                    parameters: WEBHOOK_PARAMETERS,
                },
                Executor {
                    kind,
                    name: TEMPLATE,
                    parameters: TEMPLATE_PARAMETERS,
                },
            ]
        })
        .collect()
}

/// A kind of child, as Metacontroller's `childResources` name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChildResource {
    /// `v1`, `apps/v1`.
    pub api_version: String,
    /// The plural resource name, e.g. `configmaps`.
    pub resource: String,
}

/// A resource's executor, ready to run.
#[derive(Clone, Debug)]
pub struct Lambda {
    /// The kinds its children may be.
    pub child_resources: Vec<ChildResource>,
    /// The namespace every child goes into.
    pub namespace: String,
    /// How long until it syncs again by itself.
    pub resync: Duration,
    /// Where the desired children come from.
    pub source: Source,
}

/// Where the desired children come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A sync hook over HTTP.
    Webhook(Webhook),
    /// CEL templates.
    Template(Template),
}

/// A sync hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// How long to wait.
    pub timeout: Duration,
    /// Whether deletion waits for the hook's `finalized: true`.
    pub finalize: bool,
}

/// A hook's Service, as Metacontroller's `service` hook target names it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceRef {
    name: String,
    namespace: String,
    port: Option<u16>,
    path: Option<String>,
    protocol: Option<String>,
}

impl ServiceRef {
    /// `http://<name>.<namespace>.svc:<port><path>`: the cluster's DNS name of the Service.
    fn url(&self) -> Result<String, String> {
        let protocol = self.protocol.as_deref().unwrap_or("http");
        if !matches!(protocol, "http" | "https") {
            return Err(format!("service.protocol must be http or https, got {protocol:?}"));
        }
        for (field, value) in [("name", &self.name), ("namespace", &self.namespace)] {
            if !is_dns_label(value) {
                return Err(format!("service.{field} must be a DNS label, got {value:?}"));
            }
        }
        let port = self.port.unwrap_or(if protocol == "https" { 443 } else { 80 });
        let path = self.path.as_deref().unwrap_or("/");
        if !path.starts_with('/') {
            return Err(format!("service.path must start with /, got {path:?}"));
        }
        Ok(format!(
            "{protocol}://{}.{}.svc:{port}{path}",
            self.name, self.namespace
        ))
    }
}

/// Parses the parameters of executor `name` (already type-checked by the registry) for a
/// resource of `kind` in `resource_namespace` (None: cluster-scoped).
///
/// # Errors
///
/// What is wrong, in words for the resource's `Ready` condition.
pub fn parse(
    name: &str,
    parameters: &Parameters,
    kind: Kind,
    resource_namespace: Option<&str>,
) -> Result<Lambda, String> {
    let child_resources: Vec<ChildResource> = field(parameters, CHILD_RESOURCES.name)?.unwrap_or_default();
    if child_resources.is_empty() || child_resources.len() > MAX_CHILD_RESOURCES {
        return Err(format!(
            "childResources must name 1 to {MAX_CHILD_RESOURCES} kinds, got {}",
            child_resources.len()
        ));
    }
    let namespace = target_namespace(parameters, kind, resource_namespace)?;
    let resync = seconds(
        parameters,
        RESYNC.name,
        DEFAULT_RESYNC_SECONDS,
        MIN_RESYNC_SECONDS..=MAX_RESYNC_SECONDS,
    )?;
    let source = match name {
        WEBHOOK => Source::Webhook(webhook(parameters)?),
        _ => Source::Template(Template::parse(parameters)?),
    };
    Ok(Lambda {
        child_resources,
        namespace,
        resync,
        source,
    })
}

fn webhook(parameters: &Parameters) -> Result<Webhook, String> {
    let url: Option<String> = field(parameters, "url")?;
    let service: Option<ServiceRef> = field(parameters, "service")?;
    let url = match (url, service) {
        (Some(url), None) => url,
        (None, Some(service)) => service.url()?,
        _ => return Err("give exactly one of url and service".into()),
    };
    let valid = reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !valid {
        return Err(format!("url must be an http(s) URL, got {url:?}"));
    }
    Ok(Webhook {
        url,
        timeout: seconds(
            parameters,
            "timeoutSeconds",
            DEFAULT_TIMEOUT_SECONDS,
            1..=MAX_TIMEOUT_SECONDS,
        )?,
        finalize: field(parameters, "finalize")?.unwrap_or(false),
    })
}

/// An Application's children go into its own namespace; a cluster-scoped resource names one.
/// Never a system namespace.
fn target_namespace(parameters: &Parameters, kind: Kind, resource_namespace: Option<&str>) -> Result<String, String> {
    let named: Option<String> = field(parameters, NAMESPACE.name)?;
    let namespace = match (resource_namespace, named) {
        (Some(own), Some(named)) if named != own => {
            return Err(format!(
                "namespace must be the {kind:?}'s own ({own}) or left out, got {named:?}"
            ));
        }
        (Some(own), _) => own.to_owned(),
        (None, Some(named)) => named,
        (None, None) => return Err(format!("a {kind:?} names the namespace its children go into")),
    };
    if !is_dns_label(&namespace) {
        return Err(format!("namespace must be a DNS label, got {namespace:?}"));
    }
    if Protected::default().contains(&namespace) {
        return Err(format!("namespace {namespace} is a system namespace"));
    }
    Ok(namespace)
}

fn seconds(
    parameters: &Parameters,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, String> {
    let value: u64 = field(parameters, name)?.unwrap_or(default);
    if !range.contains(&value) {
        return Err(format!(
            "{name} must be {} to {}, got {value}",
            range.start(),
            range.end()
        ));
    }
    Ok(Duration::from_secs(value))
}

/// The parameter `name`, as `T`; None when absent.
pub(crate) fn field<T: DeserializeOwned>(parameters: &Parameters, name: &str) -> Result<Option<T>, String> {
    parameters
        .get(name)
        .filter(|v| !v.is_null())
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

/// A lowercase RFC 1123 label: what namespace and Service names are.
pub(crate) fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `Value` as the parameters map it was written as.
#[cfg(test)]
pub(crate) fn as_parameters(value: serde_json::Value) -> Parameters {
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parsed(name: &str, kind: Kind, namespace: Option<&str>, parameters: Value) -> Result<Lambda, String> {
        parse(name, &as_parameters(parameters), kind, namespace)
    }

    fn configmaps() -> Value {
        json!([{"apiVersion": "v1", "resource": "configmaps"}])
    }

    #[test]
    fn a_webhook_with_a_url_runs_in_the_applications_namespace() {
        let lambda = parsed(
            WEBHOOK,
            Kind::Application,
            Some("team-a"),
            json!({"url": "http://hooks.example:8080/sync", "childResources": configmaps()}),
        )
        .unwrap();
        assert_eq!(lambda.namespace, "team-a");
        assert_eq!(lambda.resync, Duration::from_secs(60));
        let Source::Webhook(hook) = lambda.source else {
            panic!("not a webhook")
        };
        assert_eq!(hook.timeout, Duration::from_secs(10));
        assert!(!hook.finalize);
    }

    #[test]
    fn a_service_reference_becomes_its_cluster_dns_name() {
        let lambda = parsed(
            WEBHOOK,
            Kind::Project,
            None,
            json!({
                "service": {"name": "hooks", "namespace": "lambdas", "port": 8080, "path": "/sync"},
                "namespace": "team-a",
                "childResources": configmaps(),
            }),
        )
        .unwrap();
        let Source::Webhook(hook) = lambda.source else {
            panic!("not a webhook")
        };
        assert_eq!(hook.url, "http://hooks.lambdas.svc:8080/sync");
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let cases = [
            (
                json!({"childResources": configmaps()}),
                "exactly one of url and service",
            ),
            (
                json!({"url": "ftp://x/", "childResources": configmaps()}),
                "http(s) URL",
            ),
            (json!({"url": "http://x/", "childResources": []}), "1 to 8 kinds"),
            (
                json!({"url": "http://x/", "childResources": [{"apiVersion": "v1"}]}),
                "childResources",
            ),
            (
                json!({"url": "http://x/", "childResources": configmaps(), "timeoutSeconds": 31}),
                "timeoutSeconds must be 1 to 30",
            ),
            (
                json!({"url": "http://x/", "childResources": configmaps(), "namespace": "other"}),
                "the Application's own (team-a)",
            ),
            (
                json!({"service": {"name": "Hooks", "namespace": "x"}, "childResources": configmaps()}),
                "service.name must be a DNS label",
            ),
        ];
        for (parameters, expected) in cases {
            let error = parsed(WEBHOOK, Kind::Application, Some("team-a"), parameters.clone()).unwrap_err();
            assert!(error.contains(expected), "{parameters}: {error}");
        }
    }

    #[test]
    fn a_cluster_scoped_resource_names_a_namespace_that_is_not_a_system_one() {
        let missing = parsed(
            WEBHOOK,
            Kind::Cluster,
            None,
            json!({"url": "http://x/", "childResources": configmaps()}),
        );
        assert!(missing.unwrap_err().contains("names the namespace"));
        for system in ["kube-system", "default", "kube-anything"] {
            let error = parsed(
                WEBHOOK,
                Kind::VirtualCluster,
                None,
                json!({"url": "http://x/", "childResources": configmaps(), "namespace": system}),
            )
            .unwrap_err();
            assert!(error.contains("system namespace"), "{system}: {error}");
        }
    }
}
