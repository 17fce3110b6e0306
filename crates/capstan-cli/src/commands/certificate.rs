//! `capstan certificate renew`: asks a Certificate's controller to issue it again now, as cmctl's `renew` does.

use anyhow::Result;
use capstan_api::Client;
use serde_json::Value;

use super::api_failure;
use crate::EXIT_OK;

pub(super) async fn renew(client: &Client, name: &str, ns: &str) -> Result<u8> {
    client
        .post(&format!("/api/v1/namespaces/{ns}/certificates/{name}/renew"), Value::Null)
        .await
        .map_err(api_failure)?;
    println!("Manually triggered issuance of Certificate {ns}/{name}");
    Ok(EXIT_OK)
}
