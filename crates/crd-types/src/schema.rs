//! Hand-made schema fragments for fields schemars cannot describe structurally.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form JSON object kept as written (plugin parameters, templates, documents).
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Any JSON value kept as written (a policy's saved state or output).
pub(crate) fn free_form_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A PodTemplateSpec kept as written: the API server validates the pod itself when it is
/// created (as for a Job, without a copy of the pod schema in the CRD); only the shape every
/// pod needs is checked at admission.
pub(crate) fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
            },
            "spec": {
                "type": "object",
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 32,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                        },
                    },
                },
                "x-kubernetes-preserve-unknown-fields": true,
            },
        },
    })
}
