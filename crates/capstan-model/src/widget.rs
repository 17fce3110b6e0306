//! A throwaway kind, Widget, built only with the feature `throwaway-kind`: the "adding a kind" test follows
//! ARCHITECTURE.md's checklist with it and shows it listed, decoded, validated, stored, reconciled and printed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource::Object;
use crate::validate::FieldError;

/// A Widget: a size and a colour, reported back as the status.
pub type Widget = Object<WidgetSpec, WidgetStatus>;

/// What a Widget asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WidgetSpec {
    /// From 1 to 10.
    pub size: u32,
    #[serde(default = "grey")]
    pub colour: String,
}

fn grey() -> String {
    "grey".into()
}

/// What its controller reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// What the controller made of the spec.
    #[serde(default)]
    pub shape: String,
}

/// A size outside 1–10 is refused, naming the field.
pub fn validate_widget(spec: &WidgetSpec, errors: &mut Vec<FieldError>) {
    if !(1..=10).contains(&spec.size) {
        errors.push(FieldError::new("spec.size", format!("{} is out of range", spec.size)).hint("use 1 to 10"));
    }
}
