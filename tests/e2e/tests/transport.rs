//! The API's transport and the client's configuration, from the outside: TLS verified against the context's CA and
//! refused clearly against another, plain HTTP refused off the loopback, the Unix socket, and contexts as kubectl
//! keeps them (`capstan up` writes the local one, `capstan login` adds one, `config use-context` switches).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use capstan_api::tls::ApiTls;
use capstan_api::{Client, ClientError};
use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The CLI with only a client configuration: no data directory, server or token from the environment.
fn cli_with_config(config: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(bin("capstan-e2e-cli"))
        .args(args)
        .env("CAPSTAN_CONFIG", config)
        // A home without Capstan: the default data directory is empty, so only the configuration can lead anywhere.
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("CAPSTAN_DATA")
        .env_remove("CAPSTAN_SERVER")
        .env_remove("CAPSTAN_TOKEN")
        .env_remove("CAPSTAN_CA_FILE")
        .env_remove("CAPSTAN_CONTEXT")
        .output()
        .expect("run capstan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_verified_against_its_ca_and_refused_against_another() {
    let tp = TestPlane::start_with(|c| c.tls = ApiTls::Auto { sans: vec!["capstan.test".into()] }).await;
    let url = tp.plane().url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca = tp.plane().ca_file().expect("a local CA").to_path_buf();
    assert!(ca.ends_with("tls/ca.crt"));
    // The context's CA: it works, webhooks included (their own HMAC, no token).
    tp.client.get("/api/v1/apps").await.expect("verified against the local CA");
    let hook = tp.client.post("/hooks/default/nothing", serde_json::json!({})).await.unwrap_err();
    assert_eq!(hook.status().map(|s| s.as_u16()), Some(404), "the webhook receiver answers over TLS: {hook}");
    assert!(hook.to_string().contains("no webhook receiver here accepts this request"), "its own answer: {hook}");

    // Another CA: refused, naming the server and the CA file, with a hint.
    let other = tempfile::tempdir().unwrap();
    capstan_api::tls::serve(other.path(), "127.0.0.1:1".parse().unwrap(), &ApiTls::Auto { sans: vec![] }).unwrap();
    let other_ca = other.path().join(capstan_api::tls::CA_FILE);
    let stranger = Client::with_ca(&url, tp.plane().token(), Some(&other_ca)).unwrap();
    let e = stranger.get("/api/v1/apps").await.unwrap_err();
    assert!(matches!(e, ClientError::Certificate { .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.contains(&url) && shown.contains(&other_ca.display().to_string()) && shown.contains("hint"),
        "{shown}"
    );
    // The system's CAs do not know a local CA either.
    let e = Client::new(&url, tp.plane().token()).get("/api/v1/apps").await.unwrap_err();
    assert!(e.to_string().contains("the system's CAs"), "{e}");
    // The CLI says the same.
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["get", "apps"])
        .env("CAPSTAN_SERVER", &url)
        .env("CAPSTAN_TOKEN", tp.plane().token())
        .env("CAPSTAN_CA_FILE", &other_ca)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("does not vouch for") && text(&out).contains(&other_ca.display().to_string()),
        "{}",
        text(&out)
    );
    // Plain HTTP to the TLS port gets nothing useful.
    assert!(Client::new(url.replace("https://", "http://"), tp.plane().token()).get("/api/v1/apps").await.is_err());

    // The certificate names what the flags said.
    let pem = std::fs::read(tp.dir.path().join("tls/server.crt")).unwrap();
    assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    scrapes_itself(&tp.client).await;
    tp.stop().await;
}

/// Capstan's own metrics are scraped (over the Unix socket), whatever certificate the API serves.
async fn scrapes_itself(client: &Client) {
    eventually("Capstan scrapes itself", T, || async {
        let v = client.get("/prometheus/api/v1/query?query=up%7Bjob%3D%22capstan%22%7D").await.ok()?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_user_gives_is_served_and_capstan_still_scrapes_itself() {
    // A certificate from "the user's PKI": another directory's CA and server certificate, for 127.0.0.1.
    let pki = tempfile::tempdir().unwrap();
    capstan_api::tls::serve(pki.path(), "127.0.0.1:1".parse().unwrap(), &ApiTls::Auto { sans: vec![] }).unwrap();
    let (cert, key) = (pki.path().join("tls/server.crt"), pki.path().join("tls/server.key"));
    let tp = TestPlane::start_with(|c| c.tls = ApiTls::Files { cert: cert.clone(), key: key.clone() }).await;
    assert!(tp.plane().ca_file().is_none(), "no local CA is made for a user's certificate");
    assert!(!tp.dir.path().join("tls/ca.crt").exists());
    let theirs = Client::with_ca(tp.plane().url(), tp.plane().token(), Some(&pki.path().join("tls/ca.crt"))).unwrap();
    theirs.get("/api/v1/apps").await.expect("verified against the user's CA");
    scrapes_itself(&theirs).await;
    tp.stop().await;
    // A key that does not belong to the certificate is named.
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    capstan_api::tls::serve(other.path(), "127.0.0.1:1".parse().unwrap(), &ApiTls::Auto { sans: vec![] }).unwrap();
    let mixed = ApiTls::Files { cert, key: other.path().join("tls/server.key") };
    let e = capstan_api::tls::serve(dir.path(), "127.0.0.1:1".parse().unwrap(), &mixed).err().unwrap().to_string();
    assert!(e.contains("server.crt") && e.contains("belong together"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_off_the_loopback_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = capstan_api::PlaneConfig::new(dir.path().join("data"), "0.0.0.0:0".parse().unwrap());
    cfg.tls = ApiTls::Off;
    cfg.encryption_key = capstan_api::keys::KeySource::File(dir.path().join("k"));
    let e = capstan_api::ControlPlane::start(cfg).await.err().expect("refused").to_string();
    assert!(e.contains("0.0.0.0:0") && e.contains("without TLS") && e.contains("hint"), "{e}");
    assert!(!dir.path().join("data").exists(), "refused before anything was made");
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "0.0.0.0:0", "--plain-http"])
        .env("CAPSTAN_DATA", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("drop --plain-http"), "{}", text(&out));
}

/// One request over the Unix socket; the status code and the body.
async fn over_socket(socket: &Path, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: capstan\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_the_api_to_its_user_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let tp = TestPlane::start_with(|c| c.tls = ApiTls::Auto { sans: vec![] }).await;
    let socket = tp.plane().socket().to_path_buf();
    assert_eq!(socket, tp.dir.path().join("capstan.sock"));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let (code, body) = over_socket(&socket, "/api/v1/whoami", tp.plane().token()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admin\""), "{body}");
    let (code, _) = over_socket(&socket, "/api/v1/apps", "wrong").await;
    assert_eq!(code, 401, "the same tokens and roles as over TCP");
    let data = tp.dir.path().to_path_buf();
    tp.stop().await;
    assert!(!data.join("capstan.sock").exists(), "removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_written_by_up_and_login_lead_the_cli_to_the_right_capstan() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let config = dir.path().join("client/config");
    let data = dir.path().join("data");
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, app_yaml("web", 1, &[], READINESS)).unwrap();
    let up = Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0", "--tls-san", "capstan.example.test"])
        .arg(&manifest)
        .env("CAPSTAN_DATA", &data)
        .env("CAPSTAN_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _up = Guarded(up);
    // Nothing but the configuration: `up` wrote the local context and made it current.
    let out = eventually("the local context works", T, || async {
        let out = cli_with_config(&config, &home, &["get", "app", "web", "-o", "json"]);
        out.status.success().then_some(out)
    })
    .await;
    let app: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(app["metadata"]["name"], "web");
    // `--tls-san` names one more host in the server's certificate.
    let pem = std::fs::read(data.join("tls/server.crt")).unwrap();
    let leaf = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap().to_vec()
    };
    assert!(leaf.windows(20).any(|w| w == b"capstan.example.test"), "the certificate names the --tls-san host");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    let listed = text(&cli_with_config(&config, &home, &["config", "get-contexts"]));
    assert!(listed.contains("* ") || listed.contains("*  "), "{listed}");
    assert!(listed.contains("local-data") && listed.contains("https://127.0.0.1:"), "{listed}");

    // A viewer's token, and a login with it: checked against the server first, then current.
    let out = cli_with_config(&config, &home, &["token", "create", "ro", "--role", "viewer"]);
    assert!(out.status.success(), "{}", text(&out));
    let token_file = dir.path().join("ro.token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join(capstan_api::SERVER_FILE)).unwrap()).unwrap();
    let url = server["url"].as_str().unwrap().to_string();
    let ca = data.join(capstan_api::tls::CA_FILE);
    // A token file others can read is refused with a hint.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "login",
        url.as_str(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--certificate-authority",
        ca.to_str().unwrap(),
        "--name",
        "ro",
    ];
    let out = cli_with_config(&config, &home, &args);
    assert!(!out.status.success() && text(&out).contains("chmod 600"), "{}", text(&out));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli_with_config(&config, &home, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("as ro (viewer)"), "{}", text(&out));
    let me = text(&cli_with_config(&config, &home, &["token", "whoami"]));
    assert!(me.starts_with("ro (viewer"), "{me}");
    // The viewer may read, not change.
    assert!(cli_with_config(&config, &home, &["get", "apps"]).status.success());
    let out = cli_with_config(&config, &home, &["delete", "app", "web"]);
    assert!(!out.status.success() && text(&out).contains("may not delete"), "{}", text(&out));
    // CAPSTAN_SERVER and CAPSTAN_TOKEN still override the current context.
    let admin_token = std::fs::read_to_string(data.join(capstan_api::TOKEN_FILE)).unwrap();
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["token", "whoami"])
        .env("CAPSTAN_CONFIG", &config)
        .env("HOME", &home)
        .env_remove("CAPSTAN_DATA")
        .env("CAPSTAN_SERVER", &url)
        .env("CAPSTAN_TOKEN", admin_token.trim())
        .env("CAPSTAN_CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(text(&out).starts_with("admin"), "the environment's token, not the context's: {}", text(&out));
    // --context picks another without switching; use-context switches.
    let me = text(&cli_with_config(&config, &home, &["--context", "local-data", "token", "whoami"]));
    assert!(me.starts_with("admin"), "{me}");
    let out = cli_with_config(&config, &home, &["config", "use-context", "local-data"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&cli_with_config(&config, &home, &["config", "current-context"])).trim(), "local-data");
    let out = cli_with_config(&config, &home, &["config", "use-context", "nope"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("no context named nope") && shown.contains("local-data") && shown.contains("ro"), "{shown}");
    // A login against another CA is refused before anything is written.
    let other = tempfile::tempdir().unwrap();
    capstan_api::tls::serve(other.path(), "127.0.0.1:1".parse().unwrap(), &ApiTls::Auto { sans: vec![] }).unwrap();
    let other_ca = other.path().join(capstan_api::tls::CA_FILE);
    let before = std::fs::read(&config).unwrap();
    let out = cli_with_config(
        &config,
        &home,
        &[
            "login",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--certificate-authority",
            other_ca.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success() && text(&out).contains("does not vouch for"), "{}", text(&out));
    assert_eq!(std::fs::read(&config).unwrap(), before);
    assert!(cli_with_config(&config, &home, &["shutdown"]).status.success());
}
