//! `capstan delete`: by KIND NAME or by the objects in manifest files.

use anyhow::Result;
use capstan_api::Client;
use capstan_model::Kind;

use super::{api_failure, kind_arg, load};
use crate::{Failure, EXIT_FAIL, EXIT_OK};

pub(super) async fn delete(
    client: &Client,
    kind: Option<&str>,
    name: Option<&str>,
    files: &[String],
    ns: Option<&str>,
) -> Result<u8> {
    let targets: Vec<(Kind, String, String)> = if !files.is_empty() {
        load(files)?
            .iter()
            .map(|m| (m.resource.kind(), m.resource.namespace().to_string(), m.resource.meta().name.clone()))
            .collect()
    } else {
        match (kind, name) {
            (Some(k), Some(n)) => vec![(kind_arg(k)?, ns.unwrap_or("default").to_string(), n.to_string())],
            _ => {
                return Err(Failure::invalid(
                    "error: name a KIND and NAME, or -f FILE\n  hint: capstan delete app hello",
                )
                .into())
            }
        }
    };
    let mut code = EXIT_OK;
    for (kind, ns, name) in targets {
        match client.delete(&super::object_path(kind, &ns, &name)).await {
            Ok(_) => println!("{}/{name} deleted", kind.name().to_ascii_lowercase()),
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                eprintln!("error: {e}");
                code = EXIT_FAIL;
            }
            Err(e) => return Err(api_failure(e)),
        }
    }
    Ok(code)
}
