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
- {name: lambda-executor, key: lambdaExecutor, outbound: true, crds: [projects.hierarchy.orrery.dev, clusters.hierarchy.orrery.dev, virtualclusters.hierarchy.orrery.dev, applications.hierarchy.orrery.dev]}
{{- end }}

{{- define "orrery.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: orrery
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/*
An admission policy's matchCondition exempting the controller (its ServiceAccount, given) that
writes that kind itself: it acts only on objects already admitted (a Project's children were
checked when the Project was) and holds the rights its work needs.
*/}}
{{- define "orrery.admission.exempt" -}}
- name: not-the-controller
  expression: request.userInfo.username != '{{ . }}'
{{- end }}

{{/* An admission policy's binding: the policy denies, everywhere. */}}
{{- define "orrery.admission.binding" -}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {{ .name }}
  labels:
    {{- include "orrery.labels" .ctx | nindent 4 }}
spec:
  policyName: {{ .name }}
  validationActions: [Deny]
{{- end }}

{{/*
Admission policy variables <name>0 … <name><count>: <name>k is the list `from` without its
first k distinct items, so its first item is the k-th distinct one, and <name><count> is empty
exactly when there are at most `count`. One pass over the list per step: CEL's distinct() costs
the square of the length, beyond the API server's budget for a Project's 1024 Applications.
*/}}
{{- define "orrery.admission.distinct" -}}
- name: {{ .name }}0
  expression: variables.{{ .from }}
{{- range $k := until (int .count) }}
- name: {{ $.name }}{{ add1 $k }}
  expression: variables.{{ $.name }}{{ $k }}.filter(x, x != variables.{{ $.name }}{{ $k }}[0])
{{- end }}
{{- end }}
