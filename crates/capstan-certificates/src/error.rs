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
}

impl IssueError {
    pub(crate) fn rcgen(e: rcgen::Error) -> IssueError {
        IssueError::Sign(e.to_string())
    }
}
