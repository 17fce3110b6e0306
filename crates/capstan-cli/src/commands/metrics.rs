//! `capstan metrics lint`: checks a Prometheus or OpenMetrics exposition.

use anyhow::Result;

use crate::{Failure, EXIT_FAIL, EXIT_OK};

pub(super) fn metrics_lint(file: &str, format: Option<&str>) -> Result<u8> {
    use capstan_observe::exposition::{check, Format};
    let text = if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure::invalid(format!("error: cannot read standard input: {e}")))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure::invalid(format!("error: {file}: {e}")))?
    };
    let format = match format {
        None => Format::detect(None, &text),
        Some("prometheus") => Format::Prometheus,
        Some("openmetrics") => Format::OpenMetrics,
        Some(other) => {
            return Err(Failure::invalid(format!(
                "error: unknown format `{other}`\n  hint: use prometheus or openmetrics"
            ))
            .into())
        }
    };
    let problems = check(&text, format);
    for p in &problems {
        let at = match (p.line, p.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
            (Some(l), None) => format!("{file}:{l}"),
            _ => file.to_string(),
        };
        let what = if p.severity == capstan_observe::exposition::Severity::Error { "error" } else { "lint" };
        let metric = p.metric.as_deref().map(|m| format!("{m}: ")).unwrap_or_default();
        println!("{at}: {what}: {metric}{}", p.message);
    }
    Ok(if problems.is_empty() { EXIT_OK } else { EXIT_FAIL })
}
