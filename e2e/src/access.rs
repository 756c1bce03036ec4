//! Who may do what, for tests of least authority: a user with exactly the rights a case names,
//! and a controller with exactly the chart's rules. Both are bound through RBAC on the real
//! control plane and used by impersonation. The ClusterRoles and bindings are named after the
//! test's namespace and live as long as the test binary's control plane.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client, Config};
use serde_json::{Value, json};

use crate::{Deadline, TestEnv, helm, poll_until};

/// The user name of ServiceAccount `name` in `namespace`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Grants `user` the RBAC `rules` (a JSON list of PolicyRules): in `namespace` only (a
/// RoleBinding), or cluster-wide when `None`. Returns once the authorizer allows the first
/// rule's first verb.
pub async fn grant(env: &TestEnv, user: &str, namespace: Option<&str>, rules: Value) -> anyhow::Result<()> {
    let suffix: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    static GRANTS: AtomicUsize = AtomicUsize::new(0);
    let name = format!("{}-{suffix}-{}", env.namespace, GRANTS.fetch_add(1, Ordering::Relaxed));
    let role: ClusterRole = serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))?;
    Api::<ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .with_context(|| format!("creating ClusterRole {name}"))?;
    let binding = json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    });
    match namespace {
        Some(namespace) => {
            Api::<RoleBinding>::namespaced(env.client.clone(), namespace)
                .create(&PostParams::default(), &serde_json::from_value(binding)?)
                .await
                .with_context(|| format!("creating RoleBinding {name}"))?;
        }
        None => {
            Api::<ClusterRoleBinding>::all(env.client.clone())
                .create(&PostParams::default(), &serde_json::from_value(binding)?)
                .await
                .with_context(|| format!("creating ClusterRoleBinding {name}"))?;
        }
    }
    // RBAC changes take a moment to reach the authorizer's cache.
    let first = &rules[0];
    let (group, resource, verb) = (
        first["apiGroups"][0].as_str().unwrap_or_default().to_owned(),
        first["resources"][0].as_str().unwrap_or_default().to_owned(),
        first["verbs"][0].as_str().unwrap_or_default().to_owned(),
    );
    let at = namespace.unwrap_or(&env.namespace).to_owned();
    poll_until("the grant to take effect", Deadline::default(), || async {
        match allowed(&env.client, user, &verb, &group, &resource, &at).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("not yet".into()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    Ok(())
}

/// Whether `user` may `verb` `resource` of `group` in `namespace`, as the authorizer answers.
pub async fn allowed(
    admin: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": ["system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace}}
    }))?;
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A client acting as `user` (in group `system:authenticated`).
pub fn client_as(env: &TestEnv, user: &str) -> anyhow::Result<Client> {
    Ok(Client::try_from(env.impersonating(user, &["system:authenticated"]))?)
}

/// A client acting as ServiceAccount `controller` of the test's namespace, bound cluster-wide
/// to exactly the rules of the chart's ClusterRole for that controller.
pub async fn as_controller(env: &TestEnv, controller: &str) -> anyhow::Result<Client> {
    Ok(Client::try_from(controller_config(env, controller).await?)?)
}

/// [`as_controller`]'s configuration, for a client made on another runtime (a client's
/// connections live on the runtime that made it).
pub async fn controller_config(env: &TestEnv, controller: &str) -> anyhow::Result<Config> {
    let objects = crate::yaml_objects(&helm::controller_only(controller)?)?;
    let role = objects
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "ClusterRole"))
        .context("the chart renders no ClusterRole")?;
    let user = service_account_user(&env.namespace, controller);
    grant(env, &user, None, role.data["rules"].clone()).await?;
    Ok(env.impersonating(
        &user,
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{}", env.namespace),
            "system:authenticated",
        ],
    ))
}
