//! The pure core: from a StagedBindingPolicy, the BindingPolicies it owns, KubeStellar's
//! Bindings and CombinedStatuses, and the time, decide which stages' BindingPolicies should
//! exist, whether the active stage is fulfilled, and what the status says.
//!
//! Rules (documented in docs/staged-binding.md):
//! - One BindingPolicy per placed stage, named `<policy>.<stage>`, controlled by the policy
//!   (owner reference with `controller: true` to its uid). `placementMode: Move` keeps only the
//!   active stage's; `Keep` keeps every stage reached.
//! - A BindingPolicy the policy does not control is never written or deleted: one already at a
//!   name a stage needs is a conflict (Ready=False `BindingPolicyConflict`), looked at again
//!   every [`CONFLICT_RECHECK`]. Controlled ones at other names (the old `<policy>-<stage>`
//!   scheme, a removed stage) are pruned.
//! - A stage is fulfilled when its `condition` holds for the CombinedStatus of every workload
//!   object its `filter` picks from the Binding (at least one), continuously for `soakSeconds`.
//!   A stage without a condition is fulfilled once placed.
//! - A stage that requires approval starts only when the approve annotation names it.
//! - Past `progressDeadlineSeconds` the stage fails: `Pause` stays, `Rollback` returns to the
//!   previous stage; either way the rollout stops (Failed) until the spec changes.
//! - Editing the spec continues from the active stage if it still exists (its deadline restarts),
//!   or restarts from the first stage if it was removed.
//! - An expression that does not compile stops the rollout where it is (Ready=False); a runtime
//!   error on one status counts as "not met", with the error in the Progressing message.

use std::collections::BTreeMap;

use crd_types::common::{Time, find_condition, seconds, set_condition};
use crd_types::kubestellar::{
    Binding, BindingPolicy, BindingPolicySpec, CombinedStatus, DownsyncClause, REPORT_NAMESPACE,
    combined_status_labels as labels,
};
use crd_types::placement::{
    APPROVE_ANNOTATION, FailurePolicy, PlacementMode, StageRecord, StagedBindingPolicy, StagedBindingPolicyStatus,
};
use jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};

use crate::expressions::{CONDITION_ALIAS, CONDITION_VARIABLE, FILTER_VARIABLE, StageExpressions};

/// Label on every BindingPolicy a policy owns, naming the policy.
pub const POLICY_LABEL: &str = "placement.orrery.dev/staged-binding-policy";
/// Label naming the stage a BindingPolicy places.
pub const STAGE_LABEL: &str = "placement.orrery.dev/stage";

/// Condition types.
pub const READY: &str = "Ready";
/// The rollout is moving (or waiting to).
pub const PROGRESSING: &str = "Progressing";
/// The last stage is fulfilled.
pub const COMPLETE: &str = "Complete";
/// A stage missed its deadline.
pub const FAILED: &str = "Failed";

/// Ready=False reason: a BindingPolicy a stage needs exists and is not this policy's.
pub const BINDING_POLICY_CONFLICT: &str = "BindingPolicyConflict";
/// Ready=False reason: the policy's name cannot label its BindingPolicies.
pub const NAME_TOO_LONG: &str = "NameTooLong";
/// Progressing=True reason: a stage waits for its approval annotation.
pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
/// The outcome of the stage a rollout is in.
pub const STAGE_ACTIVE: &str = "Active";
/// How often a conflict is looked at again: the controller watches only BindingPolicies
/// labelled as a policy's, so it does not see the other one go away.
pub const CONFLICT_RECHECK: SignedDuration = SignedDuration::from_secs(60);
/// The longest policy name: it is a label value on its BindingPolicies.
pub const MAX_POLICY_NAME: usize = 63;

/// What the controller sees.
#[derive(Debug)]
pub struct Observed<'a> {
    /// Now.
    pub now: Timestamp,
    /// The policy.
    pub policy: &'a StagedBindingPolicy,
    /// Its expressions, compiled, or the compile error.
    pub expressions: Result<&'a [StageExpressions], &'a str>,
    /// The BindingPolicies labelled as this policy's, and any the controller found at a name
    /// the policy would create (see [`Plan::create`]). Only those it controls
    /// ([`controlled_by`]) are its own; the others are never written or deleted.
    pub found: Vec<&'a BindingPolicy>,
    /// KubeStellar's Bindings of the BindingPolicies it controls, by name (a Binding is named
    /// after its BindingPolicy).
    pub bindings: BTreeMap<String, &'a Binding>,
    /// CombinedStatuses of its BindingPolicies.
    pub combined: Vec<&'a CombinedStatus>,
}

/// An Event to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning or Normal.
    pub warning: bool,
    /// Stable reason.
    pub reason: String,
    /// What happened.
    pub note: String,
}

/// A BindingPolicy this policy controls, to delete: the uid is the delete's precondition, so a
/// BindingPolicy made again under the same name by someone else is not the one deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// What to do.
#[derive(Debug, Default)]
pub struct Plan {
    /// The status to write.
    pub status: StagedBindingPolicyStatus,
    /// Names this plan took to be free because nothing was found there (the active stage's,
    /// those to create). The controller's cache holds only labelled BindingPolicies: it looks
    /// each name up and plans again with what it finds, until nothing new turns up.
    pub unknown: Vec<String>,
    /// BindingPolicies at names where nothing was found, to create (a create, which fails if
    /// one appeared since the controller looked).
    pub create: Vec<BindingPolicy>,
    /// BindingPolicies this policy controls, to update (server-side apply), each carrying
    /// the resourceVersion found as the apply's precondition.
    pub apply: Vec<BindingPolicy>,
    /// BindingPolicies this policy controls and no longer wants.
    pub delete: Vec<Prune>,
    /// Events.
    pub events: Vec<PlannedEvent>,
    /// When to look again (soak or deadline), besides watch events.
    pub wake_at: Option<Timestamp>,
}

/// The BindingPolicy of `stage` of `policy`: `<policy>.<stage>`. A stage name is a DNS label
/// (no dot), so the last dot splits a name back into its policy and stage: two policies never
/// share a BindingPolicy name. At most 63 + 1 + 63 characters, within a name's 253.
pub fn binding_policy_name(policy: &str, stage: &str) -> String {
    format!("{policy}.{stage}")
}

/// The policy and stage a BindingPolicy (or its Binding) named `name` would place.
pub fn placed_by(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
}

/// Whether `bp` is controlled by the StagedBindingPolicy with `uid`: only then may the
/// controller write or delete it.
pub fn controlled_by(bp: &BindingPolicy, uid: &str) -> bool {
    bp.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == StagedBindingPolicy::kind(&()))
}

/// Whether `current`, a BindingPolicy this policy controls, already says what `desired` does.
fn up_to_date(current: &BindingPolicy, desired: &BindingPolicy) -> bool {
    let labels = current.labels();
    current.spec == desired.spec && desired.labels().iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The BindingPolicy placing stage `index`.
pub fn stage_binding_policy(policy: &StagedBindingPolicy, index: usize) -> BindingPolicy {
    let stage = &policy.spec.stages[index];
    let mut bp = BindingPolicy::new(
        &binding_policy_name(&policy.name_any(), &stage.name),
        BindingPolicySpec {
            cluster_selectors: stage.cluster_selectors.clone(),
            downsync: policy
                .spec
                .downsync
                .iter()
                .map(|c| c.to_binding_policy_clause())
                .collect(),
        },
    );
    bp.metadata.labels = Some(
        [
            (POLICY_LABEL.to_string(), policy.name_any()),
            (STAGE_LABEL.to_string(), stage.name.clone()),
        ]
        .into(),
    );
    bp.metadata.owner_references = policy.controller_owner_ref(&()).map(|o| vec![o]);
    bp
}

/// Whether the active stage's condition holds now.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Met,
    NotMet { reason: &'static str, message: String },
}

fn clause_json(clause: &DownsyncClause) -> serde_json::Value {
    serde_json::to_value(clause).unwrap_or_default()
}

/// Finds the CombinedStatus KubeStellar writes for `clause` under BindingPolicy `bp`.
fn combined_for<'a>(combined: &[&'a CombinedStatus], bp: &str, clause: &DownsyncClause) -> Option<&'a CombinedStatus> {
    let namespace = clause.namespace.clone().unwrap_or_else(|| REPORT_NAMESPACE.into());
    combined.iter().copied().find(|cs| {
        let l = cs.labels();
        cs.namespace().as_deref() == Some(namespace.as_str())
            && l.get(labels::BINDING_POLICY).map(String::as_str) == Some(bp)
            && l.get(labels::NAME) == Some(&clause.name)
            && l.get(labels::RESOURCE) == Some(&clause.resource)
            && l.get(labels::API_GROUP).map(String::as_str).unwrap_or("") == clause.group
    })
}

fn evaluate(observed: &Observed<'_>, index: usize, expressions: &StageExpressions) -> Verdict {
    let policy = observed.policy;
    let bp = binding_policy_name(&policy.name_any(), &policy.spec.stages[index].name);
    // A stage whose name is another's BindingPolicy is not placed, so never fulfilled; that
    // BindingPolicy's Binding says nothing about this rollout.
    let uid = policy.uid().unwrap_or_default();
    if observed
        .found
        .iter()
        .any(|b| b.name_any() == bp && !controlled_by(b, &uid))
    {
        return Verdict::NotMet {
            reason: BINDING_POLICY_CONFLICT,
            message: format!(
                "stage {:?} cannot be placed: BindingPolicy {bp} is not this policy's",
                policy.spec.stages[index].name
            ),
        };
    }
    let Some(condition) = &expressions.condition else {
        return Verdict::Met;
    };
    let Some(binding) = observed.bindings.get(&bp) else {
        return Verdict::NotMet {
            reason: "AwaitingBinding",
            message: format!("waiting for KubeStellar to resolve BindingPolicy {bp}"),
        };
    };
    let workload = &binding.spec.workload;
    let mut picked = Vec::new();
    for clause in workload.namespace_scope.iter().chain(&workload.cluster_scope) {
        let keep = match &expressions.filter {
            None => true,
            Some(filter) => match filter.evaluate_bool(&[(FILTER_VARIABLE, &clause_json(clause))]) {
                Ok(keep) => keep,
                Err(err) => {
                    return Verdict::NotMet {
                        reason: "FilterError",
                        message: format!("filter on {}/{}: {err}", clause.resource, clause.name),
                    };
                }
            },
        };
        if keep {
            picked.push(clause);
        }
    }
    if picked.is_empty() {
        return Verdict::NotMet {
            reason: "NothingSelected",
            message: format!("no workload object in Binding {bp} passes the filter"),
        };
    }
    for clause in picked {
        let object = format!(
            "{} {}/{}",
            clause.resource,
            clause.namespace.as_deref().unwrap_or(""),
            clause.name
        );
        let Some(status) = combined_for(&observed.combined, &bp, clause) else {
            return Verdict::NotMet {
                reason: "AwaitingStatus",
                message: format!("waiting for the CombinedStatus of {object}"),
            };
        };
        let value = serde_json::to_value(status).unwrap_or_default();
        match condition.evaluate_bool(&[(CONDITION_VARIABLE, &value), (CONDITION_ALIAS, &value)]) {
            Ok(true) => {}
            Ok(false) => {
                return Verdict::NotMet {
                    reason: "ConditionNotMet",
                    message: format!("the condition does not hold yet for {object}"),
                };
            }
            Err(err) => {
                return Verdict::NotMet {
                    reason: "ConditionError",
                    message: format!("the condition failed on {object}, counted as not met: {err}"),
                };
            }
        }
    }
    Verdict::Met
}

fn active_record<'a>(status: &'a mut StagedBindingPolicyStatus, stage: &str) -> Option<&'a mut StageRecord> {
    status
        .history
        .iter_mut()
        .rev()
        .find(|r| r.name == stage && r.outcome == STAGE_ACTIVE)
}

fn start_record(status: &mut StagedBindingPolicyStatus, stage: &str, now: Time, message: &str) {
    status.history.push(StageRecord {
        name: stage.into(),
        started: Some(now),
        condition_met: None,
        ended: None,
        outcome: STAGE_ACTIVE.into(),
        message: Some(message.into()),
    });
    status.active_stage = Some(stage.into());
}

fn approved(policy: &StagedBindingPolicy, stage: &str) -> bool {
    policy.annotations().get(APPROVE_ANNOTATION).map(String::as_str) == Some(stage)
}

/// Plans one reconcile.
pub fn plan(observed: &Observed<'_>) -> Plan {
    let policy = observed.policy;
    let spec = &policy.spec;
    let now = seconds(observed.now);
    let generation = policy.metadata.generation;
    let stored = policy.status.clone().unwrap_or_default();
    let mut status = stored.clone();
    status.observed_generation = generation;
    let spec_changed = stored.observed_generation.is_some_and(|g| Some(g) != generation);
    let mut plan = Plan::default();
    let mut event = |warning: bool, reason: &str, note: String| {
        plan.events.push(PlannedEvent {
            warning,
            reason: reason.into(),
            note,
        })
    };
    let condition_is =
        |type_: &str, value: &str| find_condition(&stored.conditions, type_).is_some_and(|c| c.status == value);

    // Where the rollout is.
    let index_of = |name: &str| spec.stages.iter().position(|s| s.name == name);
    let mut failed = condition_is(FAILED, "True") && !spec_changed;
    let mut active = match stored.active_stage.as_deref() {
        Some(name) => match index_of(name) {
            Some(index) => {
                if spec_changed {
                    // Continue where we are, with a fresh deadline under the new spec.
                    if let Some(record) = active_record(&mut status, name) {
                        record.started = Some(now.clone());
                        record.condition_met = None;
                    } else {
                        start_record(&mut status, name, now.clone(), "resumed after a spec change");
                    }
                }
                Some(index)
            }
            None => {
                event(
                    false,
                    "Restarted",
                    format!("stage {name:?} is no longer in the spec; restarting from the first stage"),
                );
                if let Some(record) = active_record(&mut status, name) {
                    record.outcome = "Removed".into();
                    record.ended = Some(now.clone());
                }
                status.active_stage = None;
                failed = false;
                None
            }
        },
        None => None,
    };
    let mut awaiting_approval = None;
    if active.is_none() {
        let first = &spec.stages[0];
        if first.require_approval.unwrap_or(false) && !approved(policy, &first.name) {
            awaiting_approval = Some(first.name.clone());
        } else {
            start_record(&mut status, &first.name, now.clone(), "first stage");
            event(false, "StageStarted", format!("stage {:?} started", first.name));
            active = Some(0);
        }
    }

    let suspended = spec.suspend.unwrap_or(false);
    let mut ready = (
        true,
        "Ready".to_string(),
        "the rollout's expressions compile".to_string(),
    );
    let mut progressing = (true, "Progressing".to_string(), String::new());
    let mut complete = (
        false,
        "NotComplete".to_string(),
        "the last stage is not fulfilled yet".to_string(),
    );
    let mut failure = (
        false,
        "NoFailure".to_string(),
        "no stage missed its deadline".to_string(),
    );

    if let Some(stage) = &awaiting_approval {
        progressing = (
            true,
            AWAITING_APPROVAL.into(),
            format!(
                "stage {stage:?} waits for approval: kubectl annotate sbp {} {APPROVE_ANNOTATION}={stage}",
                policy.name_any()
            ),
        );
    }

    if let Some(mut index) = active {
        let expressions = match observed.expressions {
            Ok(expressions) => Some(expressions),
            Err(err) => {
                ready = (false, "InvalidExpression".into(), err.to_owned());
                progressing = (
                    false,
                    "InvalidExpression".into(),
                    "the rollout waits until the expression is fixed".into(),
                );
                None
            }
        };
        if failed {
            failure = find_condition(&stored.conditions, FAILED)
                .map(|c| (true, c.reason.clone(), c.message.clone()))
                .unwrap_or(failure);
            progressing = (
                false,
                "Failed".into(),
                "the rollout stopped; change the spec to resume".into(),
            );
        } else if suspended {
            progressing = (false, "Suspended".into(), "suspended: stages do not advance".into());
        } else if let Some(expressions) = expressions {
            let stage = spec.stages[index].clone();
            let evaluated = binding_policy_name(&policy.name_any(), &stage.name);
            if !observed.found.iter().any(|bp| bp.name_any() == evaluated) {
                plan.unknown.push(evaluated);
            }
            match evaluate(observed, index, &expressions[index]) {
                Verdict::Met => {
                    let record = active_record(&mut status, &stage.name).map(|r| {
                        let met = r.condition_met.get_or_insert(now.clone()).clone();
                        (met, r)
                    });
                    let soak = SignedDuration::from_secs(stage.soak_seconds.unwrap_or(0));
                    let met = record.as_ref().map(|(m, _)| m.0).unwrap_or(observed.now);
                    let soaked = met.checked_add(soak).unwrap_or(met);
                    if observed.now < soaked {
                        progressing = (
                            true,
                            "Soaking".into(),
                            format!("stage {:?} holds its condition; soaking until {soaked}", stage.name),
                        );
                        plan.wake_at = Some(soaked);
                    } else if index + 1 == spec.stages.len() {
                        if let Some((_, record)) = record {
                            record.outcome = "Fulfilled".into();
                            record.ended = Some(now.clone());
                            record.message = Some("the last stage is fulfilled".into());
                            event(
                                false,
                                "RolloutComplete",
                                format!("stage {:?} fulfilled; the rollout is complete", stage.name),
                            );
                        }
                        complete = (
                            true,
                            "RolloutComplete".into(),
                            format!("every stage is fulfilled; {:?} is the last", stage.name),
                        );
                        progressing = (false, "Complete".into(), "the rollout is complete".into());
                    } else {
                        let next = &spec.stages[index + 1];
                        if next.require_approval.unwrap_or(false) && !approved(policy, &next.name) {
                            progressing = (
                                true,
                                AWAITING_APPROVAL.into(),
                                format!(
                                    "stage {:?} is fulfilled; stage {:?} waits for approval: kubectl annotate sbp {} {APPROVE_ANNOTATION}={}",
                                    stage.name,
                                    next.name,
                                    policy.name_any(),
                                    next.name
                                ),
                            );
                        } else {
                            if let Some((_, record)) = record {
                                record.outcome = "Fulfilled".into();
                                record.ended = Some(now.clone());
                                record.message = Some("condition held".into());
                            }
                            start_record(
                                &mut status,
                                &next.name,
                                now.clone(),
                                &format!("{:?} fulfilled", stage.name),
                            );
                            event(
                                false,
                                "StageAdvanced",
                                format!("stage {:?} fulfilled; stage {:?} started", stage.name, next.name),
                            );
                            progressing = (true, "StageAdvanced".into(), format!("stage {:?} started", next.name));
                            index += 1;
                            // Evaluate the new stage on the next event (its Binding does not exist yet).
                        }
                    }
                }
                Verdict::NotMet { reason, message } => {
                    let started = active_record(&mut status, &stage.name).and_then(|r| {
                        r.condition_met = None;
                        r.started.clone()
                    });
                    progressing = (true, reason.into(), message);
                    if let (Some(deadline), Some(started)) = (spec.progress_deadline_seconds, started) {
                        let due = started
                            .0
                            .checked_add(SignedDuration::from_secs(deadline))
                            .unwrap_or(started.0);
                        if observed.now >= due {
                            let why = format!("stage {:?} did not fulfil its condition within {deadline}s", stage.name);
                            if let Some(record) = active_record(&mut status, &stage.name) {
                                record.ended = Some(now.clone());
                                record.outcome = "Failed".into();
                                record.message = Some(why.clone());
                            }
                            let rollback = spec.on_failure.unwrap_or_default() == FailurePolicy::Rollback && index > 0;
                            if rollback {
                                if let Some(record) = status.history.last_mut() {
                                    record.outcome = "RolledBack".into();
                                }
                                index -= 1;
                                let previous = spec.stages[index].name.clone();
                                start_record(&mut status, &previous, now.clone(), "rolled back to");
                                failure = (
                                    true,
                                    "RolledBack".into(),
                                    format!("{why}; placement rolled back to stage {previous:?}"),
                                );
                                event(true, "RolledBack", failure.2.clone());
                            } else {
                                failure = (true, "ProgressDeadlineExceeded".into(), format!("{why}; paused"));
                                event(true, "ProgressDeadlineExceeded", failure.2.clone());
                            }
                            progressing = (
                                false,
                                "Failed".into(),
                                "the rollout stopped; change the spec to resume".into(),
                            );
                        } else {
                            plan.wake_at = Some(due);
                        }
                    }
                }
            }
        }
        active = Some(index);
    }

    // The BindingPolicies that should exist now.
    let wanted: Vec<usize> = match (active, spec.placement_mode.unwrap_or_default()) {
        (None, _) => vec![],
        (Some(index), PlacementMode::Move) => vec![index],
        (Some(index), PlacementMode::Keep) => (0..=index).collect(),
    };
    let uid = policy.uid().unwrap_or_default();
    let found: BTreeMap<String, &BindingPolicy> = observed.found.iter().map(|bp| (bp.name_any(), *bp)).collect();
    let mut conflicts = Vec::new();
    if policy.name_any().len() > MAX_POLICY_NAME {
        ready = (
            false,
            NAME_TOO_LONG.into(),
            format!(
                "the name is longer than {MAX_POLICY_NAME} characters, so it cannot label its BindingPolicies; nothing is placed"
            ),
        );
    } else {
        for index in &wanted {
            let desired = stage_binding_policy(policy, *index);
            match found.get(&desired.name_any()) {
                None => {
                    if !plan.unknown.contains(&desired.name_any()) {
                        plan.unknown.push(desired.name_any());
                    }
                    plan.create.push(desired);
                }
                Some(current) if controlled_by(current, &uid) => {
                    if !up_to_date(current, &desired) {
                        let mut desired = desired;
                        desired.metadata.resource_version = current.resource_version();
                        plan.apply.push(desired);
                    }
                }
                Some(_) => conflicts.push(desired.name_any()),
            }
        }
    }
    let wanted_names: Vec<String> = wanted
        .iter()
        .map(|i| binding_policy_name(&policy.name_any(), &spec.stages[*i].name))
        .collect();
    plan.delete = found
        .values()
        .filter(|bp| controlled_by(bp, &uid) && !wanted_names.contains(&bp.name_any()))
        .map(|bp| Prune {
            name: bp.name_any(),
            uid: bp.uid().unwrap_or_default(),
        })
        .collect();
    if !conflicts.is_empty() {
        let message = format!(
            "BindingPolicy {} already exists and is not controlled by this StagedBindingPolicy; it is left as it is. Rename the stage or the policy, or remove that BindingPolicy",
            conflicts.join(", ")
        );
        if ready.0 {
            ready = (false, BINDING_POLICY_CONFLICT.into(), message.clone());
        }
        if progressing.0 {
            progressing = (false, BINDING_POLICY_CONFLICT.into(), message);
        }
        let recheck = observed.now.checked_add(CONFLICT_RECHECK).unwrap_or(observed.now);
        plan.wake_at = Some(plan.wake_at.map_or(recheck, |at| at.min(recheck)));
    }

    for (type_, (value, reason, message)) in [
        (READY, ready),
        (PROGRESSING, progressing),
        (COMPLETE, complete),
        (FAILED, failure),
    ] {
        let before = find_condition(&stored.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()));
        let text = if value { "True" } else { "False" };
        if type_ == READY && !value && before.as_ref().map(|b| b.1.as_str()) != Some(reason.as_str()) {
            event(true, &reason, message.clone());
        }
        if type_ == PROGRESSING && before.as_ref().is_none_or(|b| b.1 != reason) && reason == AWAITING_APPROVAL {
            event(false, &reason, message.clone());
        }
        let _ = text;
        set_condition(
            &mut status.conditions,
            type_,
            value,
            &reason,
            message,
            generation,
            now.clone(),
        );
    }
    plan.status = status;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expressions::compile;
    use crd_types::kubestellar::{BindingSpec, DownsyncObjectClauses, Value};
    use serde_json::json;

    const SEED_CONDITION: &str = "combinedStatus.results.exists(r, r.name == 'deployments-aggregator' && r.rows.exists(row, row.columns.exists(col, col.type == 'Number' && col.float == '1')))";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn seed(extra: serde_json::Value) -> StagedBindingPolicy {
        let mut spec = json!({
            "downsync": [{"statusCollectors": ["deployments-aggregator"], "objectSelectors": [{"matchLabels": {"app.kubernetes.io/name": "nginx"}}]}],
            "stages": [
                {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "filter": "downsyncClause.resource == \"deployments\"", "condition": SEED_CONDITION},
                {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
            ]
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let mut policy: StagedBindingPolicy =
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "uid-p", "generation": 1}, "spec": spec}))
                .unwrap();
        policy.metadata.generation = Some(1);
        policy
    }

    fn binding(name: &str) -> Binding {
        Binding::new(
            name,
            BindingSpec {
                workload: DownsyncObjectClauses {
                    cluster_scope: vec![],
                    namespace_scope: vec![DownsyncClause {
                        group: "apps".into(),
                        version: "v1".into(),
                        resource: "deployments".into(),
                        namespace: Some("default".into()),
                        name: "nginx".into(),
                        ..DownsyncClause::default()
                    }],
                },
                destinations: vec![],
            },
        )
    }

    fn combined(bp: &str, value: &str) -> CombinedStatus {
        let mut cs: CombinedStatus = serde_json::from_value(json!({
            "metadata": {"name": "uid.uid", "namespace": "default", "labels": {
                labels::API_GROUP: "apps", labels::RESOURCE: "deployments", labels::NAMESPACE: "default",
                labels::NAME: "nginx", labels::BINDING_POLICY: bp}},
            "results": [{"name": "deployments-aggregator", "columnNames": ["count"], "rows": [{"columns": []}]}]
        }))
        .unwrap();
        cs.spec.results[0].rows[0].columns.push(Value::number(value));
        cs
    }

    struct World {
        bindings: Vec<Binding>,
        combined: Vec<CombinedStatus>,
        found: Vec<BindingPolicy>,
    }

    fn run(policy: &StagedBindingPolicy, world: &World, now: &str) -> Plan {
        let expressions = compile(&policy.spec, &Default::default());
        plan(&Observed {
            now: t(now),
            policy,
            expressions: match &expressions {
                Ok(e) => Ok(e.as_slice()),
                Err(e) => Err(e.as_str()),
            },
            found: world.found.iter().collect(),
            bindings: world.bindings.iter().map(|b| (b.name_any(), b)).collect(),
            combined: world.combined.iter().collect(),
        })
    }

    fn names(pruned: &[Prune]) -> Vec<&str> {
        pruned.iter().map(|p| p.name.as_str()).collect()
    }

    fn reason(plan: &Plan, type_: &str) -> String {
        find_condition(&plan.status.conditions, type_).unwrap().reason.clone()
    }

    #[test]
    fn the_seed_starts_at_dev_and_advances_to_prod_when_the_aggregator_reports_1() {
        let mut policy = seed(json!({}));
        let empty = World {
            bindings: vec![],
            combined: vec![],
            found: vec![],
        };
        let first = run(&policy, &empty, "2026-01-01T00:00:00Z");
        assert_eq!(first.status.active_stage.as_deref(), Some("dev"));
        assert_eq!(first.create.len(), 1);
        assert_eq!(first.create[0].name_any(), "p.dev");
        assert_eq!(reason(&first, PROGRESSING), "AwaitingBinding");

        policy.status = Some(first.status.clone());
        let mut world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "0")],
            found: first.create.clone(),
        };
        let not_yet = run(&policy, &world, "2026-01-01T00:00:05Z");
        assert_eq!(reason(&not_yet, PROGRESSING), "ConditionNotMet");
        assert!(
            not_yet.apply.is_empty() && not_yet.create.is_empty(),
            "the placed BindingPolicy is already right"
        );

        world.combined = vec![combined("p.dev", "1")];
        let advanced = run(&policy, &world, "2026-01-01T00:00:10Z");
        assert_eq!(advanced.status.active_stage.as_deref(), Some("prod"));
        assert_eq!(advanced.create[0].name_any(), "p.prod");
        assert_eq!(
            names(&advanced.delete),
            ["p.dev"],
            "Move leaves only the active stage placed"
        );
        assert_eq!(advanced.status.history[0].outcome, "Fulfilled");

        policy.status = Some(advanced.status.clone());
        world.found = advanced.create.clone();
        let done = run(&policy, &world, "2026-01-01T00:00:11Z");
        assert_eq!(reason(&done, COMPLETE), "RolloutComplete");
        // Steady state: nothing to write, apply or delete.
        policy.status = Some(done.status.clone());
        let rest = run(&policy, &world, "2026-01-01T00:10:00Z");
        assert_eq!(Some(&rest.status), policy.status.as_ref());
        assert!(rest.apply.is_empty() && rest.create.is_empty() && rest.delete.is_empty() && rest.events.is_empty());
    }

    #[test]
    fn soak_time_counts_from_when_the_condition_first_held_and_resets_when_it_stops() {
        let mut policy = seed(json!({}));
        policy.spec.stages[0].soak_seconds = Some(60);
        let start = run(
            &policy,
            &World {
                bindings: vec![],
                combined: vec![],
                found: vec![],
            },
            "2026-01-01T00:00:00Z",
        );
        policy.status = Some(start.status);
        let world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "1")],
            found: vec![],
        };
        let soaking = run(&policy, &world, "2026-01-01T00:00:10Z");
        assert_eq!(reason(&soaking, PROGRESSING), "Soaking");
        assert_eq!(soaking.wake_at, Some(t("2026-01-01T00:01:10Z")));
        policy.status = Some(soaking.status);
        let broke = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "0")],
            found: vec![],
        };
        let reset = run(&policy, &broke, "2026-01-01T00:00:30Z");
        assert_eq!(reset.status.history[0].condition_met, None);
        policy.status = Some(reset.status);
        let again = run(&policy, &world, "2026-01-01T00:00:40Z");
        assert_eq!(again.wake_at, Some(t("2026-01-01T00:01:40Z")), "the soak starts over");
    }

    #[test]
    fn a_deadline_rolls_back_to_the_previous_stage() {
        let mut policy = seed(json!({"progressDeadlineSeconds": 30, "onFailure": "Rollback"}));
        policy.spec.stages[1].condition = Some(SEED_CONDITION.into());
        let mut world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "1")],
            found: vec![],
        };
        let start = run(&policy, &world, "2026-01-01T00:00:00Z");
        policy.status = Some(start.status);
        let advanced = run(&policy, &world, "2026-01-01T00:00:01Z");
        assert_eq!(advanced.status.active_stage.as_deref(), Some("prod"));
        policy.status = Some(advanced.status);
        world.bindings.push(binding("p.prod"));
        world.combined.push(combined("p.prod", "0"));
        let waiting = run(&policy, &world, "2026-01-01T00:00:10Z");
        assert_eq!(
            waiting.wake_at,
            Some(t("2026-01-01T00:00:30Z")),
            "prod started with the first reconcile"
        );
        policy.status = Some(waiting.status);
        let failed = run(&policy, &world, "2026-01-01T00:00:31Z");
        assert_eq!(failed.status.active_stage.as_deref(), Some("dev"));
        assert_eq!(reason(&failed, FAILED), "RolledBack");
        assert_eq!(failed.create[0].name_any(), "p.dev");
        assert!(failed.events.iter().any(|e| e.reason == "RolledBack" && e.warning));
        // Stopped until the spec changes.
        policy.status = Some(failed.status);
        let stays = run(&policy, &world, "2026-01-01T00:05:00Z");
        assert_eq!(stays.status.active_stage.as_deref(), Some("dev"));
        assert_eq!(reason(&stays, PROGRESSING), "Failed");
    }

    #[test]
    fn an_expression_that_does_not_compile_is_named_and_nothing_advances() {
        let mut policy = seed(json!({}));
        policy.spec.stages[0].condition = Some("combinedStatus.results.exists(r, r.name ==".into());
        let world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "1")],
            found: vec![],
        };
        let plan = run(&policy, &world, "2026-01-01T00:00:00Z");
        let ready = find_condition(&plan.status.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidExpression")
        );
        assert!(ready.message.contains("stage \"dev\" condition"), "{}", ready.message);
        policy.status = Some(plan.status);
        let again = run(&policy, &world, "2026-01-01T00:00:10Z");
        assert_eq!(again.status.active_stage.as_deref(), Some("dev"));
    }

    #[test]
    fn an_approval_gate_waits_for_the_annotation_naming_the_stage() {
        let mut policy = seed(json!({}));
        policy.spec.stages[1].require_approval = Some(true);
        let world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "1")],
            found: vec![],
        };
        let start = run(&policy, &world, "2026-01-01T00:00:00Z");
        policy.status = Some(start.status);
        let gated = run(&policy, &world, "2026-01-01T00:00:01Z");
        assert_eq!(reason(&gated, PROGRESSING), "AwaitingApproval");
        assert_eq!(gated.status.active_stage.as_deref(), Some("dev"));
        policy.metadata.annotations = Some([(APPROVE_ANNOTATION.to_string(), "prod".to_string())].into());
        policy.status = Some(gated.status);
        let approved = run(&policy, &world, "2026-01-01T00:00:02Z");
        assert_eq!(approved.status.active_stage.as_deref(), Some("prod"));
    }

    /// A BindingPolicy named `name`, controlled by the policy with `controller` (if any),
    /// labelled as policy `labelled_for`'s (if any).
    fn found_bp(name: &str, controller: Option<&str>, labelled_for: Option<&str>) -> BindingPolicy {
        let mut bp = stage_binding_policy(&seed(json!({})), 0);
        bp.metadata.name = Some(name.into());
        bp.metadata.uid = Some(format!("uid-of-{name}"));
        bp.metadata.resource_version = Some("42".into());
        bp.metadata.owner_references = controller.map(|uid| {
            let mut policy = seed(json!({}));
            policy.metadata.uid = Some(uid.into());
            vec![policy.controller_owner_ref(&()).unwrap()]
        });
        bp.metadata.labels = labelled_for.map(|p| [(POLICY_LABEL.to_string(), p.to_string())].into());
        bp
    }

    #[test]
    fn names_of_different_policies_and_stages_never_collide() {
        assert_ne!(binding_policy_name("a", "b-c"), binding_policy_name("a-b", "c"));
        assert_eq!(binding_policy_name("a", "b-c"), "a.b-c");
        // A policy name may hold dots, a stage name may not: the last dot splits them.
        assert_eq!(
            placed_by(&binding_policy_name("web.team-a", "prod")),
            Some(("web.team-a", "prod"))
        );
        assert_eq!(placed_by("old-style-name"), None);
    }

    #[test]
    fn a_binding_policy_the_policy_does_not_control_is_left_alone_and_reported() {
        let policy = seed(json!({}));
        let now = "2026-01-01T00:00:00Z";
        for (what, victim) in [
            ("no owner", found_bp("p.dev", None, None)),
            ("another policy's", found_bp("p.dev", Some("uid-q"), Some("q"))),
            ("labelled as p's, not controlled", found_bp("p.dev", None, Some("p"))),
        ] {
            let world = World {
                bindings: vec![binding("p.dev")],
                combined: vec![combined("p.dev", "1")],
                found: vec![victim],
            };
            let plan = run(&policy, &world, now);
            assert!(
                plan.create.is_empty() && plan.apply.is_empty() && plan.delete.is_empty(),
                "{what}: {plan:?}"
            );
            let ready = find_condition(&plan.status.conditions, READY).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", BINDING_POLICY_CONFLICT),
                "{what}"
            );
            assert!(
                ready.message.contains("BindingPolicy p.dev already exists"),
                "{}",
                ready.message
            );
            assert_eq!(reason(&plan, PROGRESSING), BINDING_POLICY_CONFLICT, "{what}");
            assert!(
                plan.events
                    .iter()
                    .any(|e| e.warning && e.reason == BINDING_POLICY_CONFLICT),
                "{what}: {:?}",
                plan.events
            );
            assert_eq!(
                plan.wake_at,
                Some(t(now).checked_add(CONFLICT_RECHECK).unwrap()),
                "{what}"
            );
        }
    }

    #[test]
    fn a_stage_that_cannot_be_placed_is_not_fulfilled_even_without_a_condition() {
        let mut policy = seed(json!({}));
        policy.spec.stages[0].condition = None;
        let world = World {
            bindings: vec![],
            combined: vec![],
            found: vec![found_bp("p.dev", None, None)],
        };
        let start = run(&policy, &world, "2026-01-01T00:00:00Z");
        policy.status = Some(start.status);
        let plan = run(&policy, &world, "2026-01-01T00:00:01Z");
        assert_eq!(plan.status.active_stage.as_deref(), Some("dev"), "does not move on");
        assert!(plan.unknown.is_empty(), "{:?}", plan.unknown);
        assert!(plan.create.is_empty(), "{:?}", plan.create);
        assert_eq!(reason(&plan, PROGRESSING), BINDING_POLICY_CONFLICT);
        assert_eq!(reason(&plan, COMPLETE), "NotComplete");
    }

    #[test]
    fn every_name_taken_to_be_free_is_named_for_the_controller_to_look_up() {
        // Before the controller has looked: dev has no condition, so it would move on to prod,
        // relying on dev's name and prod's being free.
        let mut policy = seed(json!({}));
        policy.spec.stages[0].condition = None;
        let empty = World {
            bindings: vec![],
            combined: vec![],
            found: vec![],
        };
        let start = run(&policy, &empty, "2026-01-01T00:00:00Z");
        assert_eq!(start.unknown, ["p.dev", "p.prod"]);
        assert_eq!(start.create[0].name_any(), "p.prod");
        policy.status = Some(start.status);
        let placed = World {
            bindings: vec![],
            combined: vec![],
            found: vec![stage_binding_policy(&policy, 1)],
        };
        let steady = run(&policy, &placed, "2026-01-01T00:00:01Z");
        assert!(steady.unknown.is_empty(), "{:?}", steady.unknown);
    }

    #[test]
    fn a_conflict_clears_once_the_other_binding_policy_is_gone() {
        let mut policy = seed(json!({}));
        let world = World {
            bindings: vec![],
            combined: vec![],
            found: vec![found_bp("p.dev", None, None)],
        };
        let refused = run(&policy, &world, "2026-01-01T00:00:00Z");
        policy.status = Some(refused.status);
        let gone = World {
            bindings: vec![],
            combined: vec![],
            found: vec![],
        };
        let placed = run(&policy, &gone, "2026-01-01T00:01:00Z");
        assert_eq!(placed.create.len(), 1);
        assert_eq!(placed.create[0].name_any(), "p.dev");
        assert_eq!(find_condition(&placed.status.conditions, READY).unwrap().status, "True");
    }

    #[test]
    fn only_controlled_binding_policies_are_updated_or_pruned() {
        let mut policy = seed(json!({}));
        policy.spec.stages[0].cluster_selectors =
            serde_json::from_value(json!([{"matchLabels": {"env": "staging"}}])).unwrap();
        let world = World {
            bindings: vec![],
            combined: vec![],
            found: vec![
                // Ours, under the new name, with an old spec: updated over the version seen.
                found_bp("p.dev", Some("uid-p"), Some("p")),
                // Ours, under the old `<policy>-<stage>` name: pruned.
                found_bp("p-dev", Some("uid-p"), Some("p")),
                // Labelled as ours but someone else's: untouched.
                found_bp("p-prod", None, Some("p")),
            ],
        };
        let plan = run(&policy, &world, "2026-01-01T00:00:00Z");
        assert!(plan.create.is_empty());
        assert_eq!(plan.apply.len(), 1);
        assert_eq!(plan.apply[0].name_any(), "p.dev");
        assert_eq!(plan.apply[0].resource_version().as_deref(), Some("42"));
        assert_eq!(
            plan.delete,
            [Prune {
                name: "p-dev".into(),
                uid: "uid-of-p-dev".into()
            }]
        );
        assert_eq!(find_condition(&plan.status.conditions, READY).unwrap().status, "True");
    }

    #[test]
    fn a_name_too_long_to_label_places_nothing() {
        let mut policy = seed(json!({}));
        policy.metadata.name = Some("x".repeat(MAX_POLICY_NAME + 1));
        let plan = run(
            &policy,
            &World {
                bindings: vec![],
                combined: vec![],
                found: vec![],
            },
            "2026-01-01T00:00:00Z",
        );
        assert!(plan.create.is_empty() && plan.apply.is_empty());
        assert_eq!(reason(&plan, READY), NAME_TOO_LONG);
    }

    #[test]
    fn the_seed_writes_its_status_collectors_as_todays_kubestellar_reads_them() {
        let plan = run(
            &seed(json!({})),
            &World {
                bindings: vec![],
                combined: vec![],
                found: vec![],
            },
            "2026-01-01T00:00:00Z",
        );
        let written = serde_json::to_value(&plan.create[0].spec).unwrap();
        assert_eq!(
            written["downsync"][0],
            json!({"objectSelectors": [{"matchLabels": {"app.kubernetes.io/name": "nginx"}}], "statusCollectors": ["deployments-aggregator"]})
        );
    }

    #[test]
    fn kubestellar_0_24s_status_collection_is_written_in_the_current_layout() {
        let policy = seed(json!({"downsync": [{
            "objectSelectors": [{"matchLabels": {"app": "a"}}],
            "createOnly": true,
            "statusCollectors": ["one"],
            "statusCollection": {"statusCollectors": ["two", "one"]}
        }]}));
        let bp = stage_binding_policy(&policy, 0);
        let written = serde_json::to_value(&bp.spec.downsync[0]).unwrap();
        assert_eq!(
            written,
            json!({"objectSelectors": [{"matchLabels": {"app": "a"}}], "createOnly": true, "statusCollectors": ["one", "two"]})
        );
    }

    #[test]
    fn a_condition_may_name_the_combined_status_obj_as_the_seeds_text_does() {
        let mut policy = seed(json!({}));
        policy.spec.stages[0].condition = Some(SEED_CONDITION.replace("combinedStatus.", "obj."));
        let world = World {
            bindings: vec![binding("p.dev")],
            combined: vec![combined("p.dev", "1")],
            found: vec![],
        };
        let first = run(&policy, &world, "2026-01-01T00:00:00Z");
        policy.status = Some(first.status.clone());
        let world = World {
            found: first.create.clone(),
            ..world
        };
        let advanced = run(&policy, &world, "2026-01-01T00:00:01Z");
        assert_eq!(advanced.status.active_stage.as_deref(), Some("prod"));
        // Both names in one expression are the same value.
        policy.spec.stages[0].condition = Some("obj == combinedStatus && size(obj.results) == 1".into());
        policy.status = Some(first.status.clone());
        let both = run(&policy, &world, "2026-01-01T00:00:01Z");
        assert_eq!(both.status.active_stage.as_deref(), Some("prod"));
    }
}
