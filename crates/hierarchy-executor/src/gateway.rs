//! The Gateway API CRDs Applications need, generated from the `gateway-api` crate's types.

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CRD an Application's route is: a cluster without it cannot serve Applications.
pub const HTTPROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";

/// The Gateway API standard channel version the types were generated from.
pub const BUNDLE_VERSION: &str = "v1.5.1";

/// GatewayClass, Gateway and HTTPRoute, ready to apply. `*.k8s.io` groups are protected: the
/// API server takes them only with the approval annotation upstream's YAML carries.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [GatewayClass::crd(), Gateway::crd(), HttpRoute::crd()]
        .into_iter()
        .map(|mut crd| {
            let annotations = crd.metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(
                "api-approved.kubernetes.io".into(),
                "https://github.com/kubernetes-sigs/gateway-api/pull/3328".into(),
            );
            annotations.insert("gateway.networking.k8s.io/bundle-version".into(), BUNDLE_VERSION.into());
            crd
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_crd_is_among_them_approved() {
        let crds = crds();
        let route = crds
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(HTTPROUTE_CRD))
            .unwrap();
        assert!(
            route
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key("api-approved.kubernetes.io")
        );
        assert_eq!(crds.len(), 3);
    }
}
