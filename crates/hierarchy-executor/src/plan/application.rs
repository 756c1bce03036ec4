//! The Application executor's plan: for each version a Deployment and a Service, a stable
//! Service over every version, and an HTTPRoute whose backend weights split traffic.
//!
//! The weights in force come from the spec when the Application has no policies, and from the
//! policy pipeline's output (written by policy-runner into `status.policy`) when it has: only
//! a complete output computed from the current spec generation is taken; until there is one,
//! the weights and matches already in force stay. The output is a `TrafficDocument`: `weights`,
//! `matches` (rendered as rules ahead of the weighted one), `stable` and `canary`.

use std::collections::BTreeMap;

use crd_types::hierarchy::{Application, ApplicationStatus, RouteMatch, TrafficDocument, VersionStatus, VersionWeight};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeaders, HttpRouteRulesMatchesHeadersType, HttpRouteSpec,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{Readiness, owned_labels};

/// Label naming the Application on its objects and pods.
pub const APP_LABEL: &str = "hierarchy.orrery.dev/application";
/// Label naming the version on its objects and pods.
pub const VERSION_LABEL: &str = "hierarchy.orrery.dev/version";
/// The port Services expose when the Application names none.
pub const DEFAULT_PORT: i32 = 8080;

/// What the Application executor wants on its VirtualCluster's namespace.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ApplicationObjects {
    /// One per version.
    pub deployments: Vec<Deployment>,
    /// One per version, then the stable one.
    pub services: Vec<Service>,
    /// The route splitting traffic.
    pub route: HttpRoute,
    /// The weights and matches the route carries.
    pub traffic: TrafficDocument,
}

/// The name of a version's Deployment and Service.
pub fn version_object_name(app: &str, version: &str) -> String {
    format!("{app}-{version}")
}

/// The traffic the route should carry now: weights and matches.
pub fn traffic_in_force(app: &Application) -> TrafficDocument {
    let versions: Vec<&str> = app.spec.versions.iter().map(|v| v.name.as_str()).collect();
    let valid_weights = |weights: &[VersionWeight]| {
        !weights.is_empty()
            && weights
                .iter()
                .all(|w| versions.contains(&w.version.as_str()) && w.weight >= 0)
            && weights.iter().map(|w| i64::from(w.weight)).sum::<i64>() == 100
    };
    let valid = |traffic: &TrafficDocument| {
        valid_weights(&traffic.weights) && traffic.matches.iter().all(|m| versions.contains(&m.version.as_str()))
    };
    let status = app.status.as_ref();
    let from_pipeline = || {
        let pipeline = status?.common.policy.as_ref()?;
        if !pipeline.complete || pipeline.observed_generation != app.metadata.generation {
            return None;
        }
        let traffic: TrafficDocument = serde_json::from_value(pipeline.output.clone()?).ok()?;
        valid(&traffic).then_some(traffic)
    };
    let chosen = if app.spec.policies.is_empty() {
        Some(TrafficDocument {
            weights: app.spec.weights.clone(),
            ..TrafficDocument::default()
        })
        .filter(valid)
    } else {
        from_pipeline().or_else(|| {
            status
                .map(|s| TrafficDocument {
                    weights: s.weights.clone(),
                    matches: s.matches.clone(),
                    ..TrafficDocument::default()
                })
                .filter(valid)
        })
    };
    chosen.unwrap_or_else(|| TrafficDocument {
        // Everything to the first version: the Application's baseline.
        weights: versions
            .first()
            .map(|v| {
                vec![VersionWeight {
                    version: (*v).to_owned(),
                    weight: 100,
                }]
            })
            .unwrap_or_default(),
        ..TrafficDocument::default()
    })
}

/// Every object of `app`, to be applied in `namespace`, labelled as owned by `owner`.
pub fn objects(app: &Application, namespace: &str, owner: &str) -> ApplicationObjects {
    let name = app.name_any();
    let port = app.spec.port.unwrap_or(DEFAULT_PORT);
    let meta = |object_name: String, version: Option<&str>| {
        let mut labels = owned_labels(owner);
        labels.insert(APP_LABEL.into(), name.clone());
        if let Some(version) = version {
            labels.insert(VERSION_LABEL.into(), version.to_owned());
        }
        ObjectMeta {
            name: Some(object_name),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        }
    };
    let selector = |version: Option<&str>| {
        let mut labels = BTreeMap::from([(APP_LABEL.to_owned(), name.clone())]);
        if let Some(version) = version {
            labels.insert(VERSION_LABEL.into(), version.to_owned());
        }
        labels
    };
    let service = |object_name: String, version: Option<&str>| Service {
        metadata: meta(object_name, version),
        spec: Some(ServiceSpec {
            selector: Some(selector(version)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let mut deployments = Vec::new();
    let mut services = Vec::new();
    for version in &app.spec.versions {
        let object_name = version_object_name(&name, &version.name);
        let pod_labels = selector(Some(&version.name));
        deployments.push(Deployment {
            metadata: meta(object_name.clone(), Some(&version.name)),
            spec: Some(DeploymentSpec {
                replicas: Some(version.replicas.unwrap_or(1)),
                selector: LabelSelector {
                    match_labels: Some(pod_labels.clone()),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some(version.image.clone()),
                            args: (!version.args.is_empty()).then(|| version.args.clone()),
                            env: (!version.env.is_empty()).then(|| {
                                version
                                    .env
                                    .iter()
                                    .map(|(k, v)| EnvVar {
                                        name: k.clone(),
                                        value: Some(v.clone()),
                                        ..EnvVar::default()
                                    })
                                    .collect()
                            }),
                            ports: Some(vec![ContainerPort {
                                name: Some("http".into()),
                                container_port: port,
                                ..ContainerPort::default()
                            }]),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        });
        services.push(service(object_name, Some(&version.name)));
    }
    services.push(service(name.clone(), None));

    let traffic = traffic_in_force(app);
    let backend = |version: &str, weight: i32| HttpRouteRulesBackendRefs {
        name: version_object_name(&name, version),
        port: Some(port),
        weight: Some(weight),
        ..HttpRouteRulesBackendRefs::default()
    };
    // Matching requests first (one rule each, to their version), then the weighted split.
    let mut rules: Vec<HttpRouteRules> = traffic
        .matches
        .iter()
        .map(|m| HttpRouteRules {
            matches: Some(vec![route_match(m)]),
            backend_refs: Some(vec![backend(&m.version, 1)]),
            ..HttpRouteRules::default()
        })
        .collect();
    rules.push(HttpRouteRules {
        backend_refs: Some(traffic.weights.iter().map(|w| backend(&w.version, w.weight)).collect()),
        ..HttpRouteRules::default()
    });
    let route_spec = app.spec.route.as_ref();
    let route = HttpRoute {
        metadata: meta(name.clone(), None),
        spec: HttpRouteSpec {
            hostnames: route_spec.map(|r| r.hostnames.clone()).filter(|h| !h.is_empty()),
            parent_refs: route_spec.map(|r| {
                vec![HttpRouteParentRefs {
                    name: r.gateway.clone(),
                    namespace: r.gateway_namespace.clone(),
                    ..HttpRouteParentRefs::default()
                }]
            }),
            rules: Some(rules),
        },
        status: None,
    };
    ApplicationObjects {
        deployments,
        services,
        route,
        traffic,
    }
}

/// An HTTPRoute match: exact headers, and a cookie as a regular expression over the `Cookie`
/// header (Gateway API has no cookie match of its own).
fn route_match(m: &RouteMatch) -> HttpRouteRulesMatches {
    let exact = |name: &str, value: &str| HttpRouteRulesMatchesHeaders {
        name: name.to_owned(),
        r#type: Some(HttpRouteRulesMatchesHeadersType::Exact),
        value: value.to_owned(),
    };
    let mut headers: Vec<HttpRouteRulesMatchesHeaders> = m.headers.iter().map(|h| exact(&h.name, &h.value)).collect();
    if let Some(cookie) = &m.cookie {
        headers.push(HttpRouteRulesMatchesHeaders {
            name: "Cookie".into(),
            r#type: Some(HttpRouteRulesMatchesHeadersType::RegularExpression),
            value: format!(
                "(^|.*; ?){}={}(;.*|$)",
                regex_escape(&cookie.name),
                regex_escape(&cookie.value)
            ),
        });
    }
    HttpRouteRulesMatches {
        headers: Some(headers),
        ..HttpRouteRulesMatches::default()
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// Each version's readiness from its observed Deployment (absent: nothing ready yet), and
/// its containers' restarts from its pods.
pub fn version_statuses(app: &Application, observed: &[Deployment], pods: &[Pod]) -> Vec<VersionStatus> {
    let name = app.name_any();
    app.spec
        .versions
        .iter()
        .map(|version| {
            let deployment = observed
                .iter()
                .find(|d| d.name_any() == version_object_name(&name, &version.name));
            let current = deployment
                .is_some_and(|d| d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation);
            VersionStatus {
                name: version.name.clone(),
                replicas: version.replicas.unwrap_or(1),
                ready_replicas: deployment
                    .filter(|_| current)
                    .and_then(|d| d.status.as_ref()?.ready_replicas)
                    .unwrap_or(0),
                restarts: pods
                    .iter()
                    .filter(|p| p.labels().get(VERSION_LABEL) == Some(&version.name))
                    .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                    .flatten()
                    .map(|c| c.restart_count)
                    .sum(),
            }
        })
        .collect()
}

/// Ready when every version has all its replicas ready.
pub fn readiness(versions: &[VersionStatus]) -> Readiness {
    let waiting: Vec<String> = versions
        .iter()
        .filter(|v| v.ready_replicas < v.replicas)
        .map(|v| {
            format!(
                "version {} has {}/{} replicas ready",
                v.name, v.ready_replicas, v.replicas
            )
        })
        .collect();
    if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady {
            reason: "VersionsNotReady".into(),
            message: waiting.join("; "),
        }
    }
}

/// After a write refused before the route was applied (`status` has no weights yet): the
/// traffic in force stays in status, or the next reconcile would fall back to the baseline.
pub fn keep_traffic_in_force(status: &mut ApplicationStatus, previous: Option<&ApplicationStatus>) {
    if status.weights.is_empty()
        && let Some(previous) = previous
    {
        status.weights.clone_from(&previous.weights);
        status.matches.clone_from(&previous.matches);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crd_types::hierarchy::{ApplicationStatus, HierarchyStatus, PolicyPipelineStatus};
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use serde_json::json;

    fn app(spec: serde_json::Value) -> Application {
        let mut app: Application = serde_json::from_value(
            json!({"metadata": {"name": "shop", "namespace": "team-a", "generation": 3}, "spec": spec}),
        )
        .unwrap();
        app.metadata.uid = Some("uid-shop".into());
        app
    }

    fn two_versions() -> serde_json::Value {
        json!({"versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2", "replicas": 2}]})
    }

    fn weights(pairs: &[(&str, i32)]) -> Vec<VersionWeight> {
        pairs
            .iter()
            .map(|(v, w)| VersionWeight {
                version: (*v).into(),
                weight: *w,
            })
            .collect()
    }

    fn with_pipeline(mut app: Application, generation: i64, complete: bool, output: serde_json::Value) -> Application {
        let in_force = app.status.as_ref().map(|s| s.weights.clone()).unwrap_or_default();
        app.status = Some(ApplicationStatus {
            common: HierarchyStatus {
                policy: Some(PolicyPipelineStatus {
                    observed_generation: Some(generation),
                    complete,
                    output: Some(output),
                    ..PolicyPipelineStatus::default()
                }),
                ..HierarchyStatus::default()
            },
            weights: in_force,
            ..ApplicationStatus::default()
        });
        app
    }

    #[test]
    fn without_weights_everything_goes_to_the_first_version() {
        assert_eq!(traffic_in_force(&app(two_versions())).weights, weights(&[("v1", 100)]));
    }

    #[test]
    fn without_policies_the_spec_weights_are_in_force() {
        let mut spec = two_versions();
        spec["weights"] = json!([{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}]);
        assert_eq!(traffic_in_force(&app(spec)).weights, weights(&[("v1", 80), ("v2", 20)]));
    }

    #[test]
    fn with_policies_a_complete_current_output_is_in_force() {
        let mut spec = two_versions();
        spec["policies"] = json!([{"name": "canary"}]);
        let output = json!({"weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]});
        assert_eq!(
            traffic_in_force(&with_pipeline(app(spec), 3, true, output)).weights,
            weights(&[("v1", 90), ("v2", 10)])
        );
    }

    #[test]
    fn an_incomplete_stale_or_invalid_output_leaves_the_weights_in_force() {
        let mut spec = two_versions();
        spec["policies"] = json!([{"name": "canary"}]);
        let mut base = app(spec);
        base.status = Some(ApplicationStatus {
            weights: weights(&[("v1", 70), ("v2", 30)]),
            ..ApplicationStatus::default()
        });
        let half = json!({"weights": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]});
        let bad_sum = json!({"weights": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 10}]});
        let unknown = json!({"weights": [{"version": "v9", "weight": 100}]});
        for (generation, complete, output) in [
            (3, false, half.clone()),
            (2, true, half),
            (3, true, bad_sum),
            (3, true, unknown),
        ] {
            assert_eq!(
                traffic_in_force(&with_pipeline(base.clone(), generation, complete, output.clone())).weights,
                weights(&[("v1", 70), ("v2", 30)]),
                "{generation} {complete} {output}"
            );
        }
    }

    #[test]
    fn objects_per_version_a_stable_service_and_a_weighted_route() {
        let mut spec = two_versions();
        spec["weights"] = json!([{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}]);
        spec["route"] = json!({"gateway": "public", "gatewayNamespace": "infra", "hostnames": ["shop.example"]});
        let objects = objects(&app(spec), "team-a", "uid-shop");
        let names: Vec<String> = objects.deployments.iter().map(|d| d.name_any()).collect();
        assert_eq!(names, ["shop-v1", "shop-v2"]);
        let services: Vec<String> = objects.services.iter().map(|s| s.name_any()).collect();
        assert_eq!(services, ["shop-v1", "shop-v2", "shop"]);
        let v2 = &objects.deployments[1];
        assert_eq!(v2.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(v2.namespace().as_deref(), Some("team-a"));
        assert_eq!(v2.labels()[VERSION_LABEL], "v2");
        assert_eq!(v2.labels()[crd_types::hierarchy::OWNER_LABEL], "uid-shop");
        let stable = objects.services[2].spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert!(
            !stable.contains_key(VERSION_LABEL),
            "the stable Service selects every version"
        );
        let route = serde_json::to_value(&objects.route).unwrap();
        assert_eq!(
            route["spec"]["parentRefs"],
            json!([{"name": "public", "namespace": "infra"}])
        );
        assert_eq!(route["spec"]["hostnames"], json!(["shop.example"]));
        assert_eq!(
            route["spec"]["rules"][0]["backendRefs"],
            json!([{"name": "shop-v1", "port": 8080, "weight": 80}, {"name": "shop-v2", "port": 8080, "weight": 20}])
        );
    }

    #[test]
    fn matches_become_rules_ahead_of_the_weighted_split() {
        let mut spec = two_versions();
        spec["policies"] = json!([{"name": "experiment"}]);
        let output = json!({
            "weights": [{"version": "v1", "weight": 100}],
            "matches": [
                {"version": "v2", "headers": [{"name": "x-beta", "value": "yes"}]},
                {"version": "v2", "cookie": {"name": "group", "value": "a.b"}},
            ],
        });
        let objects = objects(&with_pipeline(app(spec), 3, true, output), "team-a", "uid-shop");
        let rules = serde_json::to_value(&objects.route).unwrap()["spec"]["rules"].clone();
        assert_eq!(
            rules,
            json!([
                {"matches": [{"headers": [{"name": "x-beta", "type": "Exact", "value": "yes"}]}],
                 "backendRefs": [{"name": "shop-v2", "port": 8080, "weight": 1}]},
                {"matches": [{"headers": [{"name": "Cookie", "type": "RegularExpression", "value": "(^|.*; ?)group=a\\.b(;.*|$)"}]}],
                 "backendRefs": [{"name": "shop-v2", "port": 8080, "weight": 1}]},
                {"backendRefs": [{"name": "shop-v1", "port": 8080, "weight": 100}]},
            ])
        );
        assert_eq!(objects.traffic.matches.len(), 2);
    }

    #[test]
    fn a_match_naming_an_unknown_version_leaves_the_traffic_in_force() {
        let mut spec = two_versions();
        spec["policies"] = json!([{"name": "experiment"}]);
        let output = json!({"weights": [{"version": "v1", "weight": 100}], "matches": [{"version": "v7"}]});
        let traffic = traffic_in_force(&with_pipeline(app(spec), 3, true, output));
        assert!(traffic.matches.is_empty());
    }

    fn deployment(name: &str, version: &str, generation: i64, observed: i64, ready: i32) -> Deployment {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "generation": generation, "labels": {APP_LABEL: "shop", VERSION_LABEL: version}},
        }))
        .unwrap();
        d.status = Some(DeploymentStatus {
            observed_generation: Some(observed),
            ready_replicas: Some(ready),
            ..DeploymentStatus::default()
        });
        d
    }

    #[test]
    fn restarts_are_summed_over_each_versions_pods() {
        let app = app(two_versions());
        let pod = |version: &str, restarts: i32| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": format!("p-{version}-{restarts}"), "labels": {APP_LABEL: "shop", VERSION_LABEL: version}},
                "status": {"containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": restarts}]},
            }))
            .unwrap()
        };
        let statuses = version_statuses(&app, &[], &[pod("v2", 2), pod("v2", 1), pod("v1", 0)]);
        let restarts: Vec<i32> = statuses.iter().map(|v| v.restarts).collect();
        assert_eq!(restarts, [0, 3]);
    }

    #[test]
    fn ready_when_every_version_is_and_the_message_names_those_that_are_not() {
        let app = app(two_versions());
        let observed = [
            deployment("shop-v1", "v1", 1, 1, 1),
            deployment("shop-v2", "v2", 2, 2, 1),
        ];
        let Readiness::NotReady { message, .. } = readiness(&version_statuses(&app, &observed, &[])) else {
            panic!("ready with one of two v2 replicas");
        };
        assert_eq!(message, "version v2 has 1/2 replicas ready");
        let observed = [
            deployment("shop-v1", "v1", 1, 1, 1),
            deployment("shop-v2", "v2", 2, 2, 2),
        ];
        assert_eq!(readiness(&version_statuses(&app, &observed, &[])), Readiness::Ready);
        // A Deployment whose controller has not seen its latest spec is not ready yet.
        let observed = [
            deployment("shop-v1", "v1", 2, 1, 1),
            deployment("shop-v2", "v2", 2, 2, 2),
        ];
        assert!(matches!(
            readiness(&version_statuses(&app, &observed, &[])),
            Readiness::NotReady { .. }
        ));
    }

    #[test]
    fn a_failed_write_keeps_the_traffic_in_force() {
        let weight = |w: i32| VersionWeight {
            version: "v1".into(),
            weight: w,
        };
        let previous = ApplicationStatus {
            weights: vec![weight(80)],
            ..ApplicationStatus::default()
        };
        let mut failed = ApplicationStatus::default();
        keep_traffic_in_force(&mut failed, Some(&previous));
        assert_eq!(failed.weights, [weight(80)]);
        let mut routed = ApplicationStatus {
            weights: vec![weight(100)],
            ..ApplicationStatus::default()
        };
        keep_traffic_in_force(&mut routed, Some(&previous));
        assert_eq!(routed.weights, [weight(100)]);
    }
}
