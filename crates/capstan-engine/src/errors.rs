//! Errors read as one line with their causes, for conditions and messages a person reads.

/// An error with what caused it (`error sending request: client error (Connect): tcp connect error: Connection
/// refused (os error 111)`): HTTP clients' own text alone often says only the outermost part. A cause whose text
/// the line already holds is not repeated.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn causes_are_joined_once() {
        let inner = E("connection refused", None);
        let mid = E("tcp connect error", Some(Box::new(inner)));
        let outer = E("client error (Connect)", Some(Box::new(mid)));
        assert_eq!(super::with_causes(&outer), "client error (Connect): tcp connect error: connection refused");
        let repeats = E("connect: connection refused", Some(Box::new(E("connection refused", None))));
        assert_eq!(super::with_causes(&repeats), "connect: connection refused");
    }
}
