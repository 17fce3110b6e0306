//! A connection to a replica: HTTP/1.1, or HTTP/2 without TLS ("h2c", with prior knowledge) for a port that
//! declares `appProtocol: kubernetes.io/h2c` — gRPC servers, which speak nothing else. An HTTP/2 connection carries
//! many requests at once, so it is shared rather than lent out.

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::{Request, Response};

use crate::ProxyBody;

/// The sending half of a replica connection.
pub(crate) enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// An HTTP/2 connection: the pool keeps it while requests run on it.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Another handle on a shared connection.
    pub(crate) fn share(&self) -> Option<Sender> {
        match self {
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H1(_) => None,
        }
    }

    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    pub(crate) async fn try_send_request(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(prepare_h2(req)).await,
        }
    }
}

/// HTTP/2 names the scheme and authority in the request itself (`:scheme`, `:authority`): the URI is made absolute
/// from the `Host` header, which HTTP/2 then leaves out.
fn prepare_h2(mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if req.uri().scheme().is_none() {
        let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{host}{path}").parse().or_else(|_| format!("http://localhost{path}").parse());
        if let Ok(uri) = uri {
            *req.uri_mut() = uri;
            req.headers_mut().remove(hyper::header::HOST);
        }
    }
    *req.version_mut() = hyper::Version::HTTP_2;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h2_request_carries_its_authority_in_the_uri() {
        let req = Request::get("/pkg.Service/Call?x=1")
            .header("host", "api.example.test")
            .body(crate::http::boxed(http_body_util::Empty::<bytes::Bytes>::new()))
            .expect("request");
        let req = prepare_h2(req);
        assert_eq!(req.uri().to_string(), "http://api.example.test/pkg.Service/Call?x=1");
        assert!(req.headers().get("host").is_none());
        assert_eq!(req.version(), hyper::Version::HTTP_2);
    }
}
