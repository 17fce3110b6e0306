//! Why a request could not be forwarded: the status a client gets, the label it is counted under, and whether and
//! where the attempt may be made again — decided here, once, for the balancer's `handle`.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;

/// Why no connection to a replica could be opened. Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The replica did not accept within the entry point's `connectSeconds`.
    #[error("connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    /// The replica refused the connection, or it failed on the way.
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    /// The HTTP/1.1 connection could not be set up on the open socket.
    #[error("handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    /// TLS to the replica (a BackendTLSPolicy) failed: its certificate was not trusted or not for the name.
    #[error("TLS to {addr}: {source}")]
    Tls { addr: SocketAddr, source: std::io::Error },
}

/// Why a request could not be forwarded, or its answer not be had: what the client is told (`status`, and the
/// text as the body), the `kind` its error is counted under, and whether the attempt may be made again (`retry`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the replica could be opened: nothing was sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The replica's connection failed while the request was on its way or its answer awaited. `written` is false
    /// when the connection closed before any of the request was written.
    #[error("{replica}: {source}")]
    Send { replica: String, source: hyper::Error, written: bool },
    /// The replica did not answer within the entry point's `requestSeconds` (a gateway route's
    /// `timeouts.backendRequest`, or what was left of its `timeouts.request`).
    #[error("replica {replica} did not answer within {after:?}")]
    Timeout { replica: String, after: Duration },
    /// The replica still waited for the request body when `requestSeconds` ran out: the client's delay.
    #[error("the request body did not arrive within {after:?}")]
    BodyTimeout { after: Duration },
    /// Nothing of the request body arrived for `requestSeconds`.
    #[error("nothing of the request body arrived for {after:?}")]
    BodyStalled { after: Duration },
    /// The request body is longer than the entry point's `maxBodySize`.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request body could not be read (a broken chunked encoding).
    #[error("the request body is malformed (chunked encoding?)")]
    BodyMalformed,
    /// Every attempt failed; `last` is the last failure. `moved_on` tells whether the request was taken off at
    /// least one replica (a failed connect, or a replay elsewhere).
    #[error(
        "no replica of App {namespace}/{app} could take the request: {}",
        last.as_ref().map(ToString::to_string).unwrap_or_default()
    )]
    Exhausted { namespace: String, app: String, last: Option<Box<ProxyError>>, moved_on: bool },
}

/// Where a failed attempt may be made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// On a new connection to the same replica: the pooled one closed before the request was written.
    FreshConnection,
    /// On another replica; `eject` takes the failed one out of the balance until it is ready again.
    OtherReplica { eject: bool },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Connect(_) | ProxyError::Send { .. } | ProxyError::Exhausted { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTimeout { .. } | ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyMalformed => StatusCode::BAD_REQUEST,
        }
    }

    /// The `kind` label of the errors counter.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) | ProxyError::Exhausted { moved_on: true, .. } => "connect",
            ProxyError::Send { .. } | ProxyError::Exhausted { moved_on: false, .. } => "upstream",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BodyTimeout { .. } | ProxyError::BodyStalled { .. } => "body_timeout",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyMalformed => "bad_request",
        }
    }

    /// Where the failed attempt may be made again, if anywhere. `replayable` says the request can be sent a second
    /// time once written (see `may_replay`). A failed connect sent nothing: any request goes to another replica,
    /// and the failed one is ejected. A failed send goes again on a fresh connection when nothing was written,
    /// elsewhere when the request is replayable, and nowhere otherwise. Timeouts and the client's own failures are
    /// never retried.
    pub fn retry(&self, replayable: bool) -> Option<Retry> {
        match self {
            // A backend's certificate that does not check out fails alike on every replica: not retried, and no
            // replica is taken out for it.
            ProxyError::Connect(ConnectError::Tls { .. }) => None,
            ProxyError::Connect(_) => Some(Retry::OtherReplica { eject: true }),
            ProxyError::Send { written: false, .. } => Some(Retry::FreshConnection),
            ProxyError::Send { written: true, .. } if replayable => Some(Retry::OtherReplica { eject: false }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyBody;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper_util::rt::TokioIo;

    fn empty() -> ProxyBody {
        Empty::<Bytes>::new().map_err(Into::into).boxed()
    }

    #[test]
    fn a_backend_certificate_refused_is_not_retried_elsewhere_nor_ejects() {
        let e = ProxyError::Connect(ConnectError::Tls {
            addr: "10.0.0.7:8443".parse().unwrap(),
            source: std::io::Error::other("invalid peer certificate: NotValidForName"),
        });
        assert!(e.retry(true).is_none() && e.retry(false).is_none());
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.to_string().starts_with("TLS to 10.0.0.7:8443: "), "{e}");
    }

    fn connect_failure() -> ProxyError {
        ProxyError::Connect(ConnectError::Timeout { addr: "10.0.0.7:8080".parse().unwrap() })
    }

    /// A failed send to replica `web-1`; `written` says whether the request had been written.
    async fn send_failure(written: bool) -> ProxyError {
        let (io, _replica) = tokio::io::duplex(64);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(io)).await.unwrap();
        // With its connection gone, hyper answers the request with an error.
        drop(conn);
        let source = sender.send_request(Request::new(empty())).await.unwrap_err();
        ProxyError::Send { replica: "web-1".into(), source, written }
    }

    fn exhausted(last: Option<ProxyError>, moved_on: bool) -> ProxyError {
        ProxyError::Exhausted { namespace: "shop".into(), app: "web".into(), last: last.map(Box::new), moved_on }
    }

    #[tokio::test]
    async fn each_failure_has_its_status_and_kind() {
        let after = Duration::from_secs(30);
        let cases = [
            (connect_failure(), StatusCode::BAD_GATEWAY, "connect"),
            (send_failure(true).await, StatusCode::BAD_GATEWAY, "upstream"),
            (ProxyError::Timeout { replica: "web-1".into(), after }, StatusCode::GATEWAY_TIMEOUT, "timeout"),
            (ProxyError::BodyTimeout { after }, StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            (ProxyError::BodyStalled { after }, StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            (ProxyError::BodyTooLarge { limit: 1024 }, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            (ProxyError::BodyMalformed, StatusCode::BAD_REQUEST, "bad_request"),
            (exhausted(Some(connect_failure()), true), StatusCode::BAD_GATEWAY, "connect"),
            (exhausted(Some(send_failure(true).await), false), StatusCode::BAD_GATEWAY, "upstream"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[tokio::test]
    async fn failures_read_as_before() {
        let after = Duration::from_secs(30);
        assert_eq!(connect_failure().to_string(), "connect to 10.0.0.7:8080 timed out");
        let refused = ConnectError::Connect {
            addr: "10.0.0.7:8080".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(ProxyError::from(refused).to_string(), format!("connect to 10.0.0.7:8080: {io}"));
        let sent = send_failure(false).await;
        let ProxyError::Send { source, .. } = &sent else { unreachable!() };
        assert_eq!(sent.to_string(), format!("web-1: {source}"));
        assert_eq!(
            ProxyError::Timeout { replica: "web-1".into(), after }.to_string(),
            "replica web-1 did not answer within 30s"
        );
        assert_eq!(ProxyError::BodyTimeout { after }.to_string(), "the request body did not arrive within 30s");
        assert_eq!(ProxyError::BodyStalled { after }.to_string(), "nothing of the request body arrived for 30s");
        assert_eq!(ProxyError::BodyTooLarge { limit: 1024 }.to_string(), "request body larger than 1024 bytes");
        assert_eq!(ProxyError::BodyMalformed.to_string(), "the request body is malformed (chunked encoding?)");
        assert_eq!(
            exhausted(Some(connect_failure()), true).to_string(),
            "no replica of App shop/web could take the request: connect to 10.0.0.7:8080 timed out"
        );
        assert_eq!(exhausted(None, false).to_string(), "no replica of App shop/web could take the request: ");
    }

    #[tokio::test]
    async fn only_unsent_or_replayable_requests_are_retried() {
        for replayable in [false, true] {
            // A failed connect sent nothing: any request goes to another replica, and the failed one is ejected.
            assert_eq!(connect_failure().retry(replayable), Some(Retry::OtherReplica { eject: true }));
            assert!(connect_failure().retry(replayable).is_some());
            // A connection that closed before the request was written: again, on a fresh connection.
            let unsent = send_failure(false).await;
            assert_eq!(unsent.retry(replayable), Some(Retry::FreshConnection));
            assert!(unsent.retry(replayable).is_some());
        }
        // A written request goes elsewhere only when it can be sent twice.
        let written = send_failure(true).await;
        assert_eq!(written.retry(true), Some(Retry::OtherReplica { eject: false }));
        assert!(written.retry(true).is_some());
        assert_eq!(written.retry(false), None);
        assert!(written.retry(false).is_none());
        // Timeouts, the client's own failures and the final answer are never retried.
        let after = Duration::from_secs(30);
        let never = [
            ProxyError::Timeout { replica: "web-1".into(), after },
            ProxyError::BodyTimeout { after },
            ProxyError::BodyStalled { after },
            ProxyError::BodyTooLarge { limit: 1024 },
            ProxyError::BodyMalformed,
            exhausted(Some(connect_failure()), true),
        ];
        for e in never {
            for replayable in [false, true] {
                assert_eq!(e.retry(replayable), None, "{e}");
                assert!(e.retry(replayable).is_none(), "{e}");
            }
        }
    }
}
