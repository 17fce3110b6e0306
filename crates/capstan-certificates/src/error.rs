//! Why an issuance failed, in words a Certificate's condition can carry.

/// An issuance that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The issuer cannot sign (its CA Secret missing or unusable): fixed by changing the issuer or its Secret.
    #[error("{0}")]
    Issuer(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Sign(String),
    /// The ACME server refused, could not be reached or could not validate; `retry_after` when it said when to
    /// come back (a rate limit's `Retry-After`); `rejected` when the server itself answered no (a refusal or a
    /// failed validation, which count against its limits), rather than never being reached.
    #[error("{message}")]
    Acme { message: String, retry_after: Option<chrono::DateTime<chrono::Utc>>, rejected: bool },
}

impl IssueError {
    pub(crate) fn rcgen(e: rcgen::Error) -> IssueError {
        IssueError::Sign(e.to_string())
    }
}
