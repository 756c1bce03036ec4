{{/*
The controllers this chart knows: name (binary, image, ServiceAccount), the values key holding
its settings, whether it sends requests outside the cluster's API server (`outbound`: webhooks,
metric analysis, http-post actions, remote clusters; its NetworkPolicy lets it reach
egress.allowedCIDRs), and the CRD files it needs. Adding a controller is one line here, its rules in
_rules.tpl, and its section in values.yaml.
*/}}
{{- define "orrery.controllers" -}}
- {name: ignitor-scheduler, key: ignitorScheduler, crds: [ignitors.workflow.orrery.dev, tasks.workflow.orrery.dev, taskruns.workflow.orrery.dev]}
- {name: task-workflow, key: taskWorkflow, outbound: true, crds: [ignitors.workflow.orrery.dev, tasks.workflow.orrery.dev, taskruns.workflow.orrery.dev]}
- {name: staged-binding, key: stagedBinding, crds: [stagedbindingpolicies.placement.orrery.dev]}
- {name: hierarchy-executor, key: hierarchyExecutor, outbound: true, crds: [projects.hierarchy.orrery.dev, clusters.hierarchy.orrery.dev, virtualclusters.hierarchy.orrery.dev, applications.hierarchy.orrery.dev]}
- {name: policy-runner, key: policyRunner, outbound: true, crds: [projects.hierarchy.orrery.dev, clusters.hierarchy.orrery.dev, virtualclusters.hierarchy.orrery.dev, applications.hierarchy.orrery.dev]}
{{- end }}

{{- define "orrery.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: orrery
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}
