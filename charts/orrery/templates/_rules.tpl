{{/*
Each controller's ClusterRole rules: only the verbs and resources it uses. The comment in each
is rendered with the rules, so the manifests say why too.
*/}}

{{- define "orrery.rules.ignitor-scheduler" -}}
# ignitor-scheduler reads Ignitors and writes only their status; Events.
- apiGroups: ["workflow.orrery.dev"]
  resources: ["ignitors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["workflow.orrery.dev"]
  resources: ["ignitors/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "orrery.rules.task-workflow" -}}
# task-workflow reads Tasks, TaskRuns and Ignitors; creates, cancels and prunes TaskRuns and
# writes Task and TaskRun status; creates and deletes the runs' pods; reads the Secret an
# http-post action names; Events. The annotate action patches only what you grant it in
# addition (bind a Role allowing `patch` on those objects to this ServiceAccount).
- apiGroups: ["workflow.orrery.dev"]
  resources: ["tasks", "ignitors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["workflow.orrery.dev"]
  resources: ["taskruns"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["workflow.orrery.dev"]
  resources: ["tasks/status", "taskruns/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "orrery.rules.staged-binding" -}}
# staged-binding reads StagedBindingPolicies and writes only their status; owns KubeStellar
# BindingPolicies; reads KubeStellar's Bindings and CombinedStatuses; Events.
- apiGroups: ["placement.orrery.dev"]
  resources: ["stagedbindingpolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["placement.orrery.dev"]
  resources: ["stagedbindingpolicies/status"]
  verbs: ["patch"]
- apiGroups: ["control.kubestellar.io"]
  resources: ["bindingpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["control.kubestellar.io"]
  resources: ["bindings", "combinedstatuses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "orrery.rules.hierarchy-executor" -}}
# hierarchy-executor runs Projects, Clusters, VirtualClusters and Applications: it applies the
# children a Project's templates describe and holds its finalizer on them; on each target
# cluster it makes namespaces with their guardrails (quota, limits, network policy, access
# RoleBindings to the admin and view ClusterRoles), Deployments, Services and HTTPRoutes, and
# installs the Gateway API CRDs when a Cluster asks; it reads the kubeconfig Secrets Clusters
# name and lists Applications' pods for their restart counts; Events. It watches every kind it
# makes (only objects carrying its owner label), so one deleted or edited by hand is put back.
# It reads (`get`) each object before writing it, and writes only those marked as made for the
# resource at hand. A remote cluster's kubeconfig needs the same rules there (`list` stands in
# for the watch: it looks again every 15 s).
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects", "clusters", "virtualclusters", "applications"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects/status", "clusters/status", "virtualclusters/status", "applications/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["resourcequotas", "limitranges"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
# RoleBindings may grant only these two ClusterRoles.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
  resourceNames: ["admin", "view"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
# Read only: an Application's versions report their containers' restarts.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete", "deletecollection"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "orrery.rules.policy-runner" -}}
# policy-runner runs the policy pipelines of every hierarchy kind: it reads them and writes
# only their status (the `policy` field, under its own field manager); Events. Prometheus
# queries and webhook calls go to the addresses the policies name, outside the API server.
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects", "clusters", "virtualclusters", "applications"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects/status", "clusters/status", "virtualclusters/status", "applications/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "orrery.rules.lambda-executor" -}}
# lambda-executor runs the hierarchy resources whose executor is `webhook` or `template`: it
# reads them, holds its finalizer on those whose hook finalizes, and writes only their status;
# it applies, reads and prunes their children, of the kinds in lambdaExecutor.childResources
# only (each resource also declares its own kinds, and its creator must be able to create
# them: see the admission policies); Events. Webhook calls go to the addresses the resources
# name, outside the API server.
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects", "clusters", "virtualclusters", "applications"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["hierarchy.orrery.dev"]
  resources: ["projects/status", "clusters/status", "virtualclusters/status", "applications/status"]
  verbs: ["patch"]
{{- range .Values.lambdaExecutor.childResources }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: [{{ .resource | quote }}]
  verbs: ["get", "list", "create", "patch", "delete"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
