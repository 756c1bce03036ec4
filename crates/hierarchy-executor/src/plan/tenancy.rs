//! Least authority: what a hierarchy resource may make its executor do on its creator's
//! behalf. The executor holds more rights than the people who create these resources, so
//! every reference they make is checked: a namespace only with its owner's opt-in and never a
//! system or release one, objects only where they are this resource's, an Application only in
//! its VirtualCluster's namespace, a policy's output never asking for more than the spec that
//! admission checked, a kubeconfig only with inline credentials.

use std::collections::{BTreeMap, BTreeSet};

use crd_types::hierarchy::{ClusterSpec, OWNER_LABEL, ProjectSpec, VirtualCluster, VirtualClusterSpec};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::config::Kubeconfig;

use super::Readiness;
use super::virtual_cluster::namespace_name;

/// On a namespace that existed before any VirtualCluster: its owner's consent that the
/// VirtualCluster of this name may adopt it (as a ReferenceGrant consents to a reference).
pub const ADOPTABLE_BY_ANNOTATION: &str = "hierarchy.orrery.dev/adoptable-by";

/// Namespaces Kubernetes itself uses: never a VirtualCluster's.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Namespaces no VirtualCluster may create or adopt: the system ones, every `kube-` one, and
/// those the operator names (the controllers' own release namespace above all: its
/// ServiceAccount tokens are the controllers' rights).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected(BTreeSet<String>);

impl Default for Protected {
    fn default() -> Self {
        Protected::new([])
    }
}

impl Protected {
    /// The system namespaces and `extra`.
    pub fn new(extra: impl IntoIterator<Item = String>) -> Self {
        let mut names: BTreeSet<String> = SYSTEM_NAMESPACES.iter().map(|n| (*n).to_owned()).collect();
        names.extend(extra.into_iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()));
        Protected(names)
    }

    /// Whether `namespace` is protected.
    pub fn contains(&self, namespace: &str) -> bool {
        namespace.starts_with("kube-") || self.0.contains(namespace)
    }
}

/// An existing namespace its owner has not let this VirtualCluster adopt.
pub const NAMESPACE_NOT_ADOPTABLE: &str = "NamespaceNotAdoptable";
/// A namespace another VirtualCluster holds.
pub const NAMESPACE_CONFLICT: &str = "NamespaceConflict";
/// An object of the name an executor would write that is not the resource's own.
pub const OWNERSHIP_CONFLICT: &str = "OwnershipConflict";

/// Whether `readiness` is a refusal that someone else's change may clear (the namespace's
/// owner consenting, the other object going away): nothing the executor watches changes when
/// that happens, so the resource has to look again by itself.
pub fn cleared_by_others(readiness: &Readiness) -> bool {
    matches!(readiness, Readiness::NotReady { reason, .. }
        if [NAMESPACE_NOT_ADOPTABLE, NAMESPACE_CONFLICT, OWNERSHIP_CONFLICT].contains(&reason.as_str()))
}

fn refused(reason: &str, message: String) -> Readiness {
    Readiness::NotReady {
        reason: reason.into(),
        message,
    }
}

/// Why `vc` may not have its namespace, as it `existing`ly is on its cluster: a protected
/// one, another VirtualCluster's, or one that existed without its owner's consent.
pub fn namespace_refusal(
    vc: &VirtualCluster,
    existing: Option<&Namespace>,
    protected: &Protected,
) -> Option<Readiness> {
    let namespace = namespace_name(vc);
    if protected.contains(&namespace) {
        return Some(refused(
            "NamespaceProtected",
            format!("namespace {namespace} is a system or release namespace: no VirtualCluster may have it"),
        ));
    }
    let existing = existing?;
    match existing.labels().get(OWNER_LABEL) {
        Some(holder) if Some(holder) == vc.metadata.uid.as_ref() => None,
        Some(holder) => Some(refused(
            NAMESPACE_CONFLICT,
            format!("namespace {namespace} belongs to another VirtualCluster (uid {holder})"),
        )),
        None if existing.annotations().get(ADOPTABLE_BY_ANNOTATION) == Some(&vc.name_any()) => None,
        None => Some(refused(
            NAMESPACE_NOT_ADOPTABLE,
            format!(
                "namespace {namespace} exists and is not this VirtualCluster's; its owner may let it be adopted with \
                 `kubectl annotate namespace {namespace} {ADOPTABLE_BY_ANNOTATION}={}`",
                vc.name_any()
            ),
        )),
    }
}

/// Why an Application in `app_namespace` may not run in `vc`: its objects go to the
/// VirtualCluster's namespace, so only that namespace's own Applications may ask for them, and
/// those of the namespaces the VirtualCluster lets in.
pub fn application_namespace_refusal(app_namespace: &str, vc: &VirtualCluster) -> Option<Readiness> {
    let own = namespace_name(vc);
    let allowed = std::iter::once(&own).chain(&vc.spec.application_namespaces);
    let mut allowed: Vec<&String> = allowed.collect();
    if allowed.contains(&&app_namespace.to_owned()) {
        return None;
    }
    allowed.dedup();
    let allowed: Vec<&str> = allowed.into_iter().map(String::as_str).collect();
    Some(refused(
        "NamespaceNotAllowed",
        format!(
            "VirtualCluster {} runs the Applications of namespace {} only (its applicationNamespaces \
             lets others in); this one is in {app_namespace}",
            vc.name_any(),
            allowed.join(", ")
        ),
    ))
}

/// Why the executor of the resource with uid `owner` may not apply over or delete `kind`
/// `name`, whose labels are `labels`: it is not marked as that resource's.
pub fn ownership_refusal(kind: &str, name: &str, labels: &BTreeMap<String, String>, owner: &str) -> Option<Readiness> {
    let holder = labels.get(OWNER_LABEL);
    (holder.map(String::as_str) != Some(owner)).then(|| {
        refused(
            OWNERSHIP_CONFLICT,
            match holder {
                Some(holder) => format!("{kind} {name} exists and belongs to another resource (uid {holder})"),
                None => format!("{kind} {name} exists and was not made by Orrery for this resource: it is left alone"),
            },
        )
    })
}

/// What a VirtualCluster's spec document asks its executor to grant: each access entry, and
/// each other namespace whose Applications it runs.
pub fn virtual_cluster_references(spec: &VirtualClusterSpec) -> BTreeSet<String> {
    let access = (spec.access.iter()).map(|a| format!("access {:?} {} as {:?}", a.kind, a.name, a.role));
    let applications = (spec.application_namespaces.iter()).map(|n| format!("Applications of namespace {n}"));
    access.chain(applications).collect()
}

/// What a Cluster's spec document asks its executor to read: its kubeconfig Secret.
pub fn cluster_references(spec: &ClusterSpec) -> BTreeSet<String> {
    spec.kubeconfig_secret_ref
        .iter()
        .map(|r| format!("Secret {}/{}", r.namespace.as_deref().unwrap_or_default(), r.name))
        .collect()
}

/// What a Project's spec document asks its executor to make: each templated child, and what
/// each of those asks for in turn.
pub fn project_references(spec: &ProjectSpec) -> BTreeSet<String> {
    let Some(templates) = &spec.templates else {
        return BTreeSet::new();
    };
    let mut references = BTreeSet::new();
    for cluster in &templates.clusters {
        references.insert(format!("Cluster {}", cluster.name));
        references.extend(cluster_references(&cluster.spec));
    }
    for vc in &templates.virtual_clusters {
        references.insert(format!("VirtualCluster {}", vc.name));
        let namespace = vc.spec.namespace.as_deref().unwrap_or(&vc.name);
        references.insert(format!("VirtualCluster {} namespace {namespace}", vc.name));
        let grants = virtual_cluster_references(&vc.spec);
        references.extend(grants.into_iter().map(|g| format!("VirtualCluster {} {g}", vc.name)));
    }
    for app in &templates.applications {
        let namespace = app.namespace.as_deref().unwrap_or("(its VirtualCluster's)");
        references.insert(format!("Application {namespace}/{}", app.name));
    }
    references
}

/// What `output` asks for that `spec` did not: a policy may narrow what its resource asks
/// for, never widen it past what admission checked of the spec.
pub fn added_references(spec: &BTreeSet<String>, output: &BTreeSet<String>) -> Vec<String> {
    output.difference(spec).cloned().collect()
}

/// Why the executor will not use `kubeconfig`: anything that would run a command, read a file
/// or skip TLS checks inside the controller (its own token and files are its rights, not the
/// Cluster creator's). Only inline credentials and certificates are used.
pub fn kubeconfig_refusal(kubeconfig: &Kubeconfig) -> Option<String> {
    let mut refused = Vec::new();
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else { continue };
        let fields = [
            ("exec", user.exec.is_some()),
            ("auth-provider", user.auth_provider.is_some()),
            ("tokenFile", user.token_file.is_some()),
            ("client-certificate", user.client_certificate.is_some()),
            ("client-key", user.client_key.is_some()),
        ];
        refused.extend(
            fields
                .iter()
                .filter(|(_, set)| *set)
                .map(|(field, _)| format!("user {:?} sets {field}", named.name)),
        );
    }
    for named in &kubeconfig.clusters {
        let Some(cluster) = &named.cluster else { continue };
        let fields = [
            ("certificate-authority", cluster.certificate_authority.is_some()),
            (
                "insecure-skip-tls-verify",
                cluster.insecure_skip_tls_verify == Some(true),
            ),
        ];
        refused.extend(
            fields
                .iter()
                .filter(|(_, set)| *set)
                .map(|(field, _)| format!("cluster {:?} sets {field}", named.name)),
        );
    }
    (!refused.is_empty()).then(|| {
        format!(
            "the kubeconfig may hold only inline credentials (token, client-certificate-data, client-key-data, \
             certificate-authority-data) and must verify TLS: {}",
            refused.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vc(name: &str, uid: &str, namespace: Option<&str>) -> VirtualCluster {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": uid},
            "spec": {"namespace": namespace},
        }))
        .unwrap()
    }

    fn namespace(labels: serde_json::Value, annotations: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": "x", "labels": labels, "annotations": annotations}}))
            .unwrap()
    }

    fn reason(readiness: Option<Readiness>) -> Option<String> {
        match readiness? {
            Readiness::NotReady { reason, .. } => Some(reason),
            Readiness::Ready => None,
        }
    }

    #[test]
    fn system_kube_and_release_namespaces_are_never_a_virtual_clusters() {
        let protected = Protected::new(["orrery-system".to_owned()]);
        for name in ["kube-system", "default", "kube-anything", "orrery-system"] {
            assert_eq!(
                reason(namespace_refusal(&vc("a", "u1", Some(name)), None, &protected)).as_deref(),
                Some("NamespaceProtected"),
                "{name}"
            );
        }
        assert_eq!(
            namespace_refusal(&vc("a", "u1", Some("team-a")), None, &protected),
            None
        );
        // A VirtualCluster named after a system namespace, with no namespace of its own.
        assert_eq!(
            reason(namespace_refusal(&vc("kube-public", "u1", None), None, &protected)).as_deref(),
            Some("NamespaceProtected")
        );
    }

    #[test]
    fn an_existing_namespace_is_adopted_only_with_its_owners_consent_to_this_virtual_cluster() {
        let protected = Protected::default();
        let team = vc("team-a", "u1", Some("shop"));
        let plain = namespace(json!({}), json!({}));
        assert_eq!(
            reason(namespace_refusal(&team, Some(&plain), &protected)).as_deref(),
            Some("NamespaceNotAdoptable")
        );
        let for_other = namespace(json!({}), json!({ADOPTABLE_BY_ANNOTATION: "team-b"}));
        assert_eq!(
            reason(namespace_refusal(&team, Some(&for_other), &protected)).as_deref(),
            Some("NamespaceNotAdoptable")
        );
        let consented = namespace(json!({}), json!({ADOPTABLE_BY_ANNOTATION: "team-a"}));
        assert_eq!(namespace_refusal(&team, Some(&consented), &protected), None);
        let ours = namespace(json!({OWNER_LABEL: "u1"}), json!({}));
        assert_eq!(namespace_refusal(&team, Some(&ours), &protected), None);
        let theirs = namespace(json!({OWNER_LABEL: "u2"}), json!({ADOPTABLE_BY_ANNOTATION: "team-a"}));
        assert_eq!(
            reason(namespace_refusal(&team, Some(&theirs), &protected)).as_deref(),
            Some("NamespaceConflict")
        );
    }

    #[test]
    fn refusals_someone_else_may_clear_are_looked_at_again() {
        let team = vc("team-a", "u1", Some("shop"));
        let unconsenting = namespace_refusal(&team, Some(&namespace(json!({}), json!({}))), &Protected::default());
        assert!(cleared_by_others(&unconsenting.unwrap()));
        let theirs = BTreeMap::from([(OWNER_LABEL.to_owned(), "u2".to_owned())]);
        assert!(cleared_by_others(
            &ownership_refusal("Deployment", "x", &theirs, "u1").unwrap()
        ));
        let protected = namespace_refusal(&vc("a", "u1", Some("kube-system")), None, &Protected::default());
        assert!(!cleared_by_others(&protected.unwrap()), "only a spec change clears it");
        assert!(!cleared_by_others(&Readiness::Ready));
    }

    #[test]
    fn an_application_runs_only_in_its_virtual_clusters_namespace_or_one_it_lets_in() {
        let team = vc("team-a", "u1", Some("shop"));
        assert_eq!(application_namespace_refusal("shop", &team), None);
        assert_eq!(
            reason(application_namespace_refusal("evil", &team)).as_deref(),
            Some("NamespaceNotAllowed")
        );
        let mut letting_in = team.clone();
        letting_in.spec.application_namespaces = vec!["shop-apps".into()];
        assert_eq!(application_namespace_refusal("shop-apps", &letting_in), None);
        assert_eq!(application_namespace_refusal("shop", &letting_in), None);
        let Some(Readiness::NotReady { message, .. }) = application_namespace_refusal("evil", &letting_in) else {
            panic!("evil is not let in");
        };
        assert!(message.contains("namespace shop, shop-apps only"), "{message}");
    }

    #[test]
    fn only_objects_marked_as_this_resources_are_written() {
        let ours = BTreeMap::from([(OWNER_LABEL.to_owned(), "u1".to_owned())]);
        let theirs = BTreeMap::from([(OWNER_LABEL.to_owned(), "u2".to_owned())]);
        assert_eq!(ownership_refusal("Deployment", "shop-v1", &ours, "u1"), None);
        assert_eq!(
            reason(ownership_refusal("Deployment", "shop-v1", &theirs, "u1")).as_deref(),
            Some("OwnershipConflict")
        );
        assert_eq!(
            reason(ownership_refusal("HTTPRoute", "shop", &BTreeMap::new(), "u1")).as_deref(),
            Some("OwnershipConflict")
        );
    }

    #[test]
    fn a_policy_may_narrow_but_not_widen_what_a_spec_asks_for() {
        let spec: VirtualClusterSpec =
            serde_json::from_value(json!({"access": [{"kind": "Group", "name": "team-a", "role": "view"}]})).unwrap();
        let wider: VirtualClusterSpec = serde_json::from_value(json!({"access": [
            {"kind": "Group", "name": "team-a", "role": "view"},
            {"kind": "User", "name": "mallory", "role": "admin"}]}))
        .unwrap();
        let (asked, output) = (virtual_cluster_references(&spec), virtual_cluster_references(&wider));
        assert_eq!(added_references(&asked, &output), vec!["access User mallory as Admin"]);
        assert!(added_references(&output, &asked).is_empty());

        let project: ProjectSpec = serde_json::from_value(json!({"templates": {
            "clusters": [{"name": "c", "spec": {}}],
            "virtualClusters": [{"name": "v", "spec": {"namespace": "shop"}}]}}))
        .unwrap();
        let retargeted: ProjectSpec = serde_json::from_value(json!({"templates": {
            "clusters": [{"name": "c", "spec": {"kubeconfigSecretRef": {"namespace": "kube-system", "name": "s", "key": "k"}}}],
            "virtualClusters": [{"name": "v", "spec": {"namespace": "kube-system"}}]}}))
        .unwrap();
        assert_eq!(
            added_references(&project_references(&project), &project_references(&retargeted)),
            vec!["Secret kube-system/s", "VirtualCluster v namespace kube-system"]
        );
    }

    #[test]
    fn kubeconfigs_that_run_commands_read_files_or_skip_tls_are_refused() {
        let inline = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.1.2.3:6443", certificate-authority-data: "AAAA"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#;
        assert_eq!(kubeconfig_refusal(&Kubeconfig::from_yaml(inline).unwrap()), None);
        let hostile = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.1.2.3:6443", insecure-skip-tls-verify: true}}]
users:
- {name: a, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: ["-c", "id"]}}}
- {name: b, user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}
- {name: c, user: {client-certificate: /etc/cert, client-key: /etc/key}}
contexts: [{name: x, context: {cluster: c, user: b}}]
current-context: x
"#;
        let message = kubeconfig_refusal(&Kubeconfig::from_yaml(hostile).unwrap()).unwrap();
        for refused in [
            "user \"a\" sets exec",
            "user \"b\" sets tokenFile",
            "user \"c\" sets client-certificate",
            "user \"c\" sets client-key",
            "cluster \"c\" sets insecure-skip-tls-verify",
        ] {
            assert!(message.contains(refused), "{refused} in {message}");
        }
    }
}
