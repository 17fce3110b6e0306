//! `capstan schema`: the JSON Schema of one kind, or of them all.

use anyhow::Result;
use capstan_model::Kind;
use serde_json::Value;

use super::kind_arg;
use crate::EXIT_OK;

pub(super) fn schema(kind: Option<&str>) -> Result<u8> {
    let v = match kind {
        Some(k) => kind_arg(k)?.schema(),
        None => Value::Array(Kind::ALL.iter().map(|k| k.schema()).collect()),
    };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(EXIT_OK)
}
