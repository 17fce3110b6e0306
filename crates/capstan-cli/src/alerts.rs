//! `capstan alerts`, `ack`, `resolve` and `metrics query`: incidents and metrics from the command line.

use anyhow::Result;
use capstan_api::{Client, ClientError};
use serde_json::{json, Value};

use crate::{Failure, EXIT_FAIL, EXIT_INVALID, EXIT_OK};

fn api_failure(e: ClientError) -> anyhow::Error {
    let code = match e.status().map(|s| s.as_u16()) {
        Some(400 | 422) => EXIT_INVALID,
        _ => EXIT_FAIL,
    };
    Failure { code, message: format!("error: {e}") }.into()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn labels(v: &Value) -> String {
    v.as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// `capstan alerts`: open incidents, then every pending and firing alert with the incident it belongs to — or
/// "not escalated" when no EscalationPolicy matches it (as Prometheus' alerts page lists every active alert).
pub async fn list(client: &Client, all: bool, output: &str) -> Result<u8> {
    let mut v = client.get(&format!("/api/v1/incidents?all={all}")).await.map_err(api_failure)?;
    let active = client.get("/prometheus/api/v1/alerts").await.map_err(api_failure)?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let alerts: Vec<Value> = active["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let incident = items.iter().find(|i| {
                i["state"] != "resolved"
                    && i["alerts"].as_array().is_some_and(|xs| xs.iter().any(|x| x["labels"] == a["labels"]))
            });
            let mut a = a.clone();
            a["incident"] = incident.map_or(Value::Null, |i| i["id"].clone());
            a
        })
        .collect();
    v["alerts"] = Value::Array(alerts.clone());
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&v)?),
        "yaml" => print!("{}", capstan_model::yaml::to_yaml_string(&v)),
        _ => {
            if items.is_empty() {
                println!("No {}incidents.", if all { "" } else { "open " });
            } else {
                print!("{}", incidents_table(&items));
            }
            if !alerts.is_empty() {
                println!();
                print!("{}", alerts_table(&alerts));
            }
        }
    }
    Ok(EXIT_OK)
}

fn incidents_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let firing = i["alerts"].as_array().map_or(0, |a| a.iter().filter(|a| a["state"] == "firing").count());
            let failed = i["deliveries"].as_array().map_or(0, |d| d.len());
            vec![
                s(&i["id"]),
                s(&i["state"]),
                s(&i["policy"]),
                labels(&i["group"]),
                format!("{firing}"),
                s(&i["level"]).to_string(),
                s(&i["acknowledgedBy"]),
                if failed > 0 { format!("{failed} pending") } else { "-".into() },
                s(&i["createdAt"]),
            ]
        })
        .collect();
    crate::output::table(
        &["ID", "STATE", "POLICY", "GROUP", "FIRING", "LEVEL", "ACK BY", "DELIVERIES", "CREATED"],
        &rows,
    )
}

fn alerts_table(alerts: &[Value]) -> String {
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let mut rest = a["labels"].clone();
            let name = rest.as_object_mut().and_then(|m| m.remove("alertname")).unwrap_or(Value::Null);
            vec![
                s(&name),
                s(&a["state"]),
                labels(&rest),
                s(&a["value"]),
                s(&a["activeAt"]),
                match a["incident"].as_str() {
                    Some(id) => id.to_string(),
                    None => "not escalated (no EscalationPolicy matches)".into(),
                },
            ]
        })
        .collect();
    crate::output::table(&["ALERT", "STATE", "LABELS", "VALUE", "ACTIVE SINCE", "INCIDENT"], &rows)
}

/// `capstan ack ID` and `capstan resolve ID`.
pub async fn manual(client: &Client, id: &str, verb: &str, by: Option<String>) -> Result<u8> {
    let who = by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    client.post(&format!("/api/v1/incidents/{id}/{verb}"), json!({ "by": who })).await.map_err(api_failure)?;
    println!("incident {id} {verb}d by {who}");
    Ok(EXIT_OK)
}

/// `capstan metrics query`.
pub async fn query(
    client: &Client,
    q: &str,
    time: Option<String>,
    range: Option<String>,
    step: &str,
    output: &str,
) -> Result<u8> {
    let enc = |x: &str| -> String {
        x.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let end = match &time {
        Some(t) => t.clone(),
        None => format!("{:.3}", capstan_observe::promql::now_ms() as f64 / 1000.0),
    };
    let path = match &range {
        Some(r) => {
            let secs =
                capstan_model::parse_duration(r).map_err(|e| Failure::invalid(format!("error: --range: {e}")))?;
            let end_s: f64 =
                end.parse().map_err(|_| Failure::invalid("error: --time must be Unix seconds with --range"))?;
            format!(
                "/prometheus/api/v1/query_range?query={}&start={}&end={end}&step={}",
                enc(q),
                end_s - secs.as_secs_f64(),
                enc(step)
            )
        }
        None => format!("/prometheus/api/v1/query?query={}&time={}", enc(q), enc(&end)),
    };
    let v = client.get(&path).await.map_err(api_failure)?;
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(EXIT_OK);
    }
    let data = &v["data"];
    let rows: Vec<Vec<String>> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| vec![labels(&r["metric"]), s(&r["value"][1])])
            .collect(),
        Some("matrix") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let pts = r["values"].as_array().cloned().unwrap_or_default();
                let last = pts.last().map(|p| s(&p[1])).unwrap_or_default();
                vec![labels(&r["metric"]), format!("{} points, last {last}", pts.len())]
            })
            .collect(),
        _ => vec![vec![String::new(), s(&data["result"][1])]],
    };
    print!("{}", crate::output::table(&["SERIES", "VALUE"], &rows));
    Ok(EXIT_OK)
}
