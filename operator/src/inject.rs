//! `lameduck-operator inject`: the webhook's mutation applied offline to Kubernetes YAML
//! (like `linkerd inject`). Every pod template is injected unless it says
//! `lameduck.dev/inject: "false"`, or its workload does and the template does not say
//! `"true"`: the webhook's precedence in a namespace that opted in
//! ([`lameduck_proto::opt_in::choose`]). Everything else passes through unchanged.

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use lameduck_proto::{names, opt_in};
use serde::Deserialize;
use serde_norway::Value;

use crate::webhook::patch::{InjectionConfig, InjectionPlan, PatchOutcome, build_patch};
use crate::webhook::policy::WorkloadRef;

/// Why a document could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML.
    #[error("document {index}: invalid YAML: {source}")]
    Yaml {
        /// 1-based document index.
        index: usize,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },
    /// A pod template is not a valid PodTemplateSpec.
    #[error("{object}: invalid pod template: {source}")]
    Template {
        /// `Kind/name` of the object.
        object: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The patch does not apply (a bug: the builder plans from the same object).
    #[error("{object}: cannot apply the patch at {path}")]
    Apply {
        /// `Kind/name` of the object.
        object: String,
        /// The JSON pointer that failed.
        path: String,
    },
    /// The output does not serialize.
    #[error("cannot write YAML: {0}")]
    Write(#[source] serde_norway::Error),
}

/// Per-object summary of what `inject` did, for the report on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name` of the object.
    pub object: String,
    /// What happened, in words.
    pub result: String,
}

/// Injects every pod template of the multi-document YAML `input`.
pub fn inject_yaml(
    input: &str,
    config: &InjectionConfig,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(input).enumerate() {
        let mut doc = Value::deserialize(document).map_err(|source| InjectError::Yaml {
            index: i + 1,
            source,
        })?;
        if doc.is_null() {
            continue;
        }
        inject_object(&mut doc, config, &mut reports)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(&doc).map_err(InjectError::Write)?);
    }
    Ok((out, reports))
}

/// Injects the pod template(s) of one object (recursing into `List`s).
pub fn inject_object(
    doc: &mut Value,
    config: &InjectionConfig,
    reports: &mut Vec<Report>,
) -> Result<(), InjectError> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_end_matches('-')
        .to_owned();
    let object = format!("{kind}/{name}");
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "PodTemplate" => &["template"],
        k if k.ends_with("List") => {
            if let Some(Value::Sequence(items)) = doc.get_mut("items") {
                for item in items {
                    inject_object(item, config, reports)?;
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let workload_annotation = match kind.as_str() {
        "Pod" => None,
        _ => inject_annotation(doc.get("metadata")),
    };
    let Some(template) = get_path_mut(doc, template_path) else {
        return Ok(());
    };
    let choice = opt_in::choose(
        inject_annotation(template.get("metadata")).as_deref(),
        workload_annotation.as_deref(),
        true,
    );
    if !choice.injects() {
        reports.push(Report {
            object,
            result: "opted out".to_owned(),
        });
        return Ok(());
    }
    let pod = template_pod(template).map_err(|source| InjectError::Template {
        object: object.clone(),
        source,
    })?;
    let workload = WorkloadRef {
        kind: kind.clone(),
        name,
    };
    let policy_name = workload.policy_name();
    let plan = InjectionPlan {
        config,
        policy_name: &policy_name,
        drain: &config.default_drain,
        grace_override: None,
        drain_actions: None,
    };
    let result = match build_patch(&pod, &plan) {
        PatchOutcome::Injected(injection) => {
            if let Value::Mapping(m) = template {
                let metadata = m.entry("metadata".into()).or_insert(Value::Null);
                if !metadata.is_mapping() {
                    *metadata = Value::Mapping(Default::default());
                }
            }
            for op in &injection.patch.0 {
                apply_add(template, op).map_err(|path| InjectError::Apply {
                    object: object.clone(),
                    path,
                })?;
            }
            let mut result = format!("injected ({})", injection.containers.join(","));
            if !injection.skipped.is_empty() {
                result.push_str(&format!(
                    "; left alone, they have a preStop hook: {}",
                    injection.skipped.join(",")
                ));
            }
            for warning in &injection.warnings {
                result.push_str(&format!("; warning: {warning}"));
            }
            result
        }
        PatchOutcome::AlreadyInjected => "already injected".to_owned(),
        PatchOutcome::NotApplicable(reason) => format!("not injected: {reason}"),
    };
    reports.push(Report { object, result });
    Ok(())
}

/// The `lameduck.dev/inject` annotation of `metadata`, if it is a string.
fn inject_annotation(metadata: Option<&Value>) -> Option<String> {
    metadata
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(names::ANNOTATION_INJECT))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn get_path_mut<'a>(mut value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    for key in path {
        value = value.get_mut(*key)?;
    }
    value.is_mapping().then_some(value)
}

/// A pod (or pod template: same `metadata` + `spec` shape) as a typed Pod.
fn template_pod(template: &Value) -> Result<Pod, serde_json::Error> {
    let json = serde_json::to_value(template)?;
    let mut pod = serde_json::Map::new();
    for key in ["metadata", "spec"] {
        if let Some(v) = json.get(key) {
            pod.insert(key.to_owned(), v.clone());
        }
    }
    serde_json::from_value(serde_json::Value::Object(pod))
}

/// Applies one `add` operation to a YAML value, keeping the order of existing keys.
/// The builder only emits `add`; anything else is refused.
fn apply_add(doc: &mut Value, op: &PatchOperation) -> Result<(), String> {
    let PatchOperation::Add(add) = op else {
        return Err(op.path().to_string());
    };
    let err = || add.path.to_string();
    let tokens: Vec<String> = add
        .path
        .tokens()
        .map(|t| t.decoded().into_owned())
        .collect();
    let (last, parents) = tokens.split_last().ok_or_else(err)?;
    let mut target = &mut *doc;
    for token in parents {
        target = match target {
            Value::Mapping(m) => m.get_mut(token.as_str()).ok_or_else(err)?,
            Value::Sequence(s) => s
                .get_mut(token.parse::<usize>().map_err(|_| err())?)
                .ok_or_else(err)?,
            _ => return Err(err()),
        };
    }
    let value = serde_norway::to_value(&add.value).map_err(|_| err())?;
    match target {
        Value::Mapping(m) => {
            m.insert(Value::String(last.clone()), value);
        }
        Value::Sequence(s) if last == "-" => s.push(value),
        Value::Sequence(s) => {
            let index = last.parse::<usize>().map_err(|_| err())?;
            if index > s.len() {
                return Err(err());
            }
            s.insert(index, value);
        }
        _ => return Err(err()),
    }
    Ok(())
}
