//! The dashboard's static files, embedded in the binary: htmx and its SSE extension (vendored, see
//! `assets/vendor/README.md`), Capstan's stylesheet and script. Each is served under a name that carries its version
//! or content, so browsers may keep it for good.

/// A file the dashboard serves: its bytes and content type.
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The script tags' and stylesheet's paths, as the pages name them.
pub const HTMX: &str = "/ui/assets/htmx-2.0.11.min.js";
pub const HTMX_SSE: &str = "/ui/assets/htmx-ext-sse-2.2.4.min.js";
pub const SCRIPT: &str = concat!("/ui/assets/capstan-", env!("CARGO_PKG_VERSION"), ".js");
pub const STYLE: &str = concat!("/ui/assets/capstan-", env!("CARGO_PKG_VERSION"), ".css");

/// The asset at `path` (as under `/ui/assets/`), if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    let full = format!("/ui/assets/{path}");
    let (bytes, content_type): (&'static [u8], &'static str) = match full.as_str() {
        p if p == HTMX => (include_bytes!("../assets/vendor/htmx-2.0.11.min.js"), JS),
        p if p == HTMX_SSE => (include_bytes!("../assets/vendor/htmx-ext-sse-2.2.4.min.js"), JS),
        p if p == SCRIPT => (include_bytes!("../assets/capstan.js"), JS),
        p if p == STYLE => (include_bytes!("../assets/capstan.css"), "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(Asset { bytes, content_type })
}

/// The total size of the scripts the pages load, for the budget the issue sets (150 KB compressed).
pub fn script_bytes() -> usize {
    [HTMX, HTMX_SSE, SCRIPT]
        .iter()
        .filter_map(|p| asset(p.trim_start_matches("/ui/assets/")))
        .map(|a| a.bytes.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_a_page_names_is_served_and_nothing_else() {
        for path in [HTMX, HTMX_SSE, SCRIPT, STYLE] {
            let a = asset(path.trim_start_matches("/ui/assets/")).unwrap_or_else(|| panic!("{path}"));
            assert!(!a.bytes.is_empty(), "{path}");
        }
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("htmx.min.js").is_none(), "only the versioned names");
        // Uncompressed, the scripts are well under the 150 KB compressed budget.
        assert!(script_bytes() < 150 * 1024, "{}", script_bytes());
    }
}
