//! The committed CRD YAML is exactly what the types generate: edit the types, then run
//! `just crdgen` and commit the result.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds");
    let sets = [("", crd_types::orrery_crds())];
    let mut stale = Vec::new();
    for (subdir, crds) in sets {
        for crd in crds {
            let name = crd.metadata.name.clone().expect("every CRD has a name");
            let path = root.join(subdir).join(format!("{name}.yaml"));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != crd_types::to_yaml(&crd).expect("renders") {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD YAML, run `just crdgen`:\n{}",
        stale.join("\n")
    );
}

#[test]
fn every_orrery_kind_has_ready_status_category_and_short_name() {
    for crd in crd_types::orrery_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["orrery".to_string()][..]),
            "{name}"
        );
        assert!(
            crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name}"
        );
        let schema = serde_json::to_value(&version.schema).expect("schema serializes");
        let status = &schema["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status.get("conditions").is_some(), "{name} status has conditions");
        assert!(
            status.get("observedGeneration").is_some(),
            "{name} status has observedGeneration"
        );
    }
}

#[test]
fn task_printer_columns_are_orcas() {
    let crd = crd_types::orrery_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "Task")
        .expect("Task CRD");
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        columns,
        [
            "STATE",
            "LASTSUCCESS",
            "LASTFAILURE",
            "FAILURESCOUNT",
            "IGNITORS",
            "ONSUCCESSTASK",
            "ONFAILURETASK"
        ]
    );
}
