# Orrery: every common task is a recipe. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Show the recipes.
default:
    @just --list

# The demo, on a machine with no cluster: a local control plane, every controller as a local
# process, examples/ applied, progress shown live until Ctrl-C. Pods run on the real node where
# it can start (root, cgroups, e2e/node/setup.sh run once), else the pod simulator plays the
# kubelet; the demo says which. `just demo --simulate` always simulates.
demo *args:
    cargo build -q -p ignitor-scheduler -p task-workflow -p staged-binding -p hierarchy-executor -p policy-runner -p lambda-executor -p kubectl-orrery
    cargo build -q -p orrery-e2e --bin orrery-demo
    bash e2e/control-plane/build.sh > /dev/null
    target/debug/orrery-demo {{args}}

# With KUBECONFIG pointing at a real cluster: install the chart there (every controller, its
# CRDs and RBAC) into namespace orrery-system. Extra arguments go to helm, e.g.
# `just deploy --set stagedBinding.enabled=false`.
deploy *args:
    "$(bash e2e/helm/fetch.sh)" upgrade --install orrery charts/orrery --namespace orrery-system --create-namespace {{args}}

# One image per controller (static binary on an empty base, non-root), written without a
# container daemon as target/images/<controller>.tar; names limit it to those.
images *controllers:
    bash images/build.sh {{controllers}}

# Start a local control plane (kube-apiserver, etcd, kube-controller-manager) with every CRD
# installed and the pod simulator playing the kubelet; prints the KUBECONFIG to use.
control-plane:
    cargo run -q -p orrery-e2e --bin orrery-control-plane

# Build everything, tests and benchmarks included.
build:
    cargo build --workspace --all-targets

# Everything CI runs: lints, CRD drift, unit tests, and end-to-end tests on the real control plane.
test: lint
    bash e2e/control-plane/build.sh > /dev/null
    bash e2e/helm/fetch.sh > /dev/null
    bash e2e/toxiproxy/fetch.sh > /dev/null
    cargo build --workspace --bins
    cargo test --workspace --all-targets --no-fail-fast

# Formatting, clippy with warnings as errors, and generated CRDs up to date.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo run -q -p crd-types --bin crdgen -- --check

# Regenerate manifests/crds/ from the Rust types.
crdgen:
    cargo run -q -p crd-types --bin crdgen

# Render each controller's kustomize base (manifests/<controller>/) from the Helm chart.
manifests:
    cargo run -q -p orrery-e2e --bin orrery-manifests

# Benchmarks that print figures: CEL conditions; task-workflow and ignitor-scheduler beside the
# Job and CronJob controllers; staged-binding with many policies; hierarchy-executor building
# many Project trees; policy-runner with many pipelines (sizes via ORRERY_BENCH_* variables, see e2e/benches/).
bench:
    cargo bench -p cel-conditions --bench conditions -- --warm-up-time 1 --measurement-time 3
    cargo build --release -p task-workflow -p ignitor-scheduler -p staged-binding -p hierarchy-executor -p policy-runner
    cargo bench -p orrery-e2e --bench workflow
    cargo bench -p orrery-e2e --bench placement
    cargo bench -p orrery-e2e --bench hierarchy
    cargo bench -p orrery-e2e --bench policies

# The chaos campaign: a mixed workload (workflow chains, a cron Ignitor, Project trees released
# by canary) with every controller in-process, under controller kills, API server restarts,
# throttling (429s from a FlowSchema), network faults (Toxiproxy between the controllers and
# the API server) and watch expiry (etcd compacted while they are cut off), each alone then all
# at once, for `seconds` of faults; then the invariants (nothing lost, nothing run twice, no stuck work, no writes at rest) and
# the figures. ORRERY_CHAOS_SEED repeats a fault schedule. Built with the dev profile: the
# release profile's fat LTO would take longer to build than the campaign takes to run.
chaos seconds="900":
    bash e2e/control-plane/build.sh > /dev/null
    bash e2e/toxiproxy/fetch.sh > /dev/null
    cargo build -q --workspace --bins
    ORRERY_CHAOS_SECONDS={{seconds}} cargo bench -p orrery-e2e --profile dev --bench chaos

# Fuzz for `seconds` per target (needs nightly and cargo-fuzz): CEL compile+evaluate; cron
# schedules in time zones; every CRD through its controller's planning; policy and executor
# parameters. The last three are safe Rust looking for panics and hangs, so they run without
# AddressSanitizer; they start from fuzz/seeds/ (made from examples/ by fuzz/seed.py) and count a
# run over 10 s as a hang. Flags go to `cargo fuzz run`, e.g. `just fuzz 600 --dev` builds faster.
# What fails is kept in fuzz/artifacts/.
fuzz seconds="60" *flags:
    cd fuzz && cargo +nightly fuzz run {{flags}} compile_evaluate -- -max_total_time={{seconds}}
    cd fuzz && for target in cron_schedule crd_plans policy_parameters; do \
        mkdir -p corpus/$target; \
        cargo +nightly fuzz run -s none {{flags}} $target corpus/$target seeds/$target -- -max_total_time={{seconds}} -timeout=10; \
    done

# Evaluate a CEL expression against a YAML/JSON file: just cel 'combinedStatus.results.size() > 0' combinedStatus=cs.yaml
cel expr +vars:
    cargo run -q -p cel-conditions --bin orrery-cel -- --expr '{{expr}}' {{ replace_regex(vars, '(\S+)', '--var $1') }}
