//! Let's Encrypt's test ACME server, Debian's `pebble`, on loopback: its own TLS certificate from a test CA, every
//! name resolved to 127.0.0.1 by `pebble-challtestsrv`, validations without pebble's random sleeps, certificates as
//! short-lived as asked; stopped (both processes) when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;
use crate::tls::{certificate_for, https_get, test_ca};

pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Option<Child>,
    dns: Child,
    /// The port of pebble's ACME API.
    pub port: u16,
    pub management: u16,
    dns_port: u16,
    /// The test CA pebble's own certificate is signed by: what an Issuer's `caBundle` trusts.
    pub ca_pem: String,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, issuing certificates valid for
    /// `validity` (at least a second).
    pub fn start(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        Pebble::start_with(http_port, tls_port, validity, &[])
    }

    /// As [`Pebble::start`]; with `eab` key IDs and their base64url HMAC keys, accounts must be bound to one of them
    /// (external account binding).
    pub fn start_with(http_port: u16, tls_port: u16, validity: Duration, eab: &[(&str, &str)]) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, ca_pem) = test_ca();
        let (cert, key) = certificate_for(&["localhost", "127.0.0.1"], &ca);
        std::fs::write(dir.path().join("cert.pem"), cert).expect("write");
        std::fs::write(dir.path().join("key.pem"), key).expect("write");
        let (port, management, dns_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": !eab.is_empty(),
            "externalAccountMACKeys": eab.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            "certificateValidityPeriod": validity.as_secs().max(1),
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("write");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (Debian's pebble package; scripts/test.sh installs it)");
        let mut p = Pebble { dir, pebble: None, dns, port, management, dns_port, ca_pem };
        p.resume();
        p
    }

    /// The directory URL an Issuer's `server` names.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    /// Starts pebble again after [`Pebble::stop`], on the same ports: a new CA, and no account or order kept.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("log");
        let child = Command::new("pebble")
            .args(["-config", &self.dir.path().join("pebble.json").display().to_string()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("pebble runs (Debian's pebble package; scripts/test.sh installs it)");
        self.pebble = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "pebble did not listen: {}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops pebble (its DNS server stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What pebble has written, for assertion messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The root that signs pebble's certificates now (a new one at each start), PEM.
    pub async fn root(&self) -> String {
        let (code, body, _) =
            https_get(self.management, "localhost", "/roots/0", &self.ca_pem).await.expect("pebble's management API");
        assert_eq!(code, 200, "{body}");
        body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
