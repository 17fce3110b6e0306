//! An ACME Issuer's account: its key read from the Issuer's `privateKeySecretRef` Secret (or made, registered and
//! written there, as cert-manager does), bound to an external account when the CA asks, its contact kept up to date.

use base64::Engine;
use capstan_model::acme::{AcmeIssuer, AcmeIssuerStatus};
use capstan_model::certificate::{Issuer, KeyAlgorithm};
use capstan_model::ObjectKey;
use capstan_store::Store;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

use super::http::{AcmeHttp, Trust};
use crate::error::IssueError;
use crate::keys::Key;

/// The key an account key is kept under when `privateKeySecretRef.key` is not given.
const ACCOUNT_KEY: &str = "tls.key";
/// The key of the external account's HMAC key when `keySecretRef.key` is not given.
const EAB_KEY: &str = "secret";

fn issuer_error(message: String) -> IssueError {
    IssueError::Issuer(message)
}

/// How the Issuer's server is checked.
pub fn trust(acme: &AcmeIssuer) -> Result<Trust, IssueError> {
    if acme.skip_tls_verify {
        return Ok(Trust::Nothing);
    }
    match &acme.ca_bundle {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(Trust::Bundle)
            .map_err(|_| issuer_error("spec.acme.caBundle is not base64".into())),
        None => Ok(Trust::System),
    }
}

/// A value of a Secret of `namespace`: None when the Secret or the key is missing (a read error is an error).
fn secret_value(store: &Store, namespace: &str, name: &str, key: &str) -> Result<Option<Vec<u8>>, IssueError> {
    let k = ObjectKey::new("Secret", namespace, name);
    let Some(s) = store.get(&k).map_err(|e| issuer_error(format!("reading {k}: {e}")))? else { return Ok(None) };
    let spec = crate::secret::spec_of(&s).map_err(|e| issuer_error(format!("{k}: {e}")))?;
    Ok(spec.value(key))
}

/// The SHA-256 of a key, hex, as `status.acme.lastPrivateKeyHash`.
fn key_hash(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The Issuer's account: loaded from its status and key when they agree, else registered (a new key made and
/// written to the Secret when there is none). Returns the account and the status to write.
pub async fn account(
    store: &Store,
    issuer: &Issuer,
    acme: &AcmeIssuer,
    http: &AcmeHttp,
) -> Result<(Account, AcmeIssuerStatus), IssueError> {
    let ns = issuer.secrets_namespace();
    let sel = &acme.private_key_secret_ref;
    let key_name = sel.key_or(ACCOUNT_KEY);
    let known = issuer.status.as_ref().and_then(|s| s.acme.clone()).unwrap_or_default();
    let builder = || Account::builder_with_http(Box::new(http.clone()));
    let contact: Vec<String> = acme.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
    let refused = |what: &str, e: instant_acme::Error| eab_hint(super::acme_error(what, &e, http), &sel.name);

    match secret_value(store, ns, &sel.name, key_name)? {
        Some(pem) => {
            let key = Key::from_pem(&pem)
                .map_err(|e| issuer_error(format!("the account key in Secret {} ({key_name}): {e}", sel.name)))?;
            if key.algorithm != KeyAlgorithm::Ecdsa(256) {
                return Err(issuer_error(format!(
                    "the account key in Secret {} is {}: Capstan's ACME client signs with ECDSA P-256 keys; delete the Secret to have one made and registered",
                    sel.name, key.algorithm
                )));
            }
            let hash = key_hash(&key.pkcs8);
            let same_server = known.uri.as_deref().is_some_and(|u| same_origin(u, &acme.server));
            let known_account = same_server && known.last_private_key_hash.as_deref() == Some(hash.as_str());
            let account = if known_account {
                let uri = known.uri.clone().unwrap_or_default();
                builder()
                    .from_parts(uri, PrivatePkcs8KeyDer::from(key.pkcs8.clone()), acme.server.clone())
                    .await
                    .map_err(|e| refused("reaching the ACME server", e))?
            } else {
                // A key the server may already know (registered before, or by cert-manager): found, or registered.
                let ikey = instant_acme::Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(key.pkcs8.clone()))
                    .map_err(|e| refused("reading the account key", e))?;
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8.clone()));
                builder()
                    .create_from_key((ikey, der), acme.server.clone())
                    .await
                    .map_err(|e| refused("registering the ACME account", e))?
                    .0
            };
            // A contact changed, or an account found or registered again (another server, another key): its
            // contact is set.
            if (known.last_registered_email != acme.email || !known_account) && !contact_refs.is_empty() {
                account.update_contacts(&contact_refs).await.map_err(|e| refused("updating the account's email", e))?;
            }
            let status = AcmeIssuerStatus {
                uri: Some(account.id().to_string()),
                last_registered_email: acme.email.clone(),
                last_private_key_hash: Some(hash),
            };
            Ok((account, status))
        }
        None => {
            if acme.disable_account_key_generation {
                return Err(issuer_error(format!(
                    "Secret {} holds no account key ({key_name}) and spec.acme.disableAccountKeyGeneration is set",
                    sel.name
                )));
            }
            let eab = match &acme.external_account_binding {
                None => None,
                Some(b) => {
                    let name = &b.key_secret_ref.name;
                    let k = b.key_secret_ref.key_or(EAB_KEY);
                    let raw = secret_value(store, ns, name, k)?.ok_or_else(|| {
                        issuer_error(format!(
                            "spec.acme.externalAccountBinding.keySecretRef: Secret {name} has no key `{k}`"
                        ))
                    })?;
                    let text = String::from_utf8_lossy(&raw).trim().to_string();
                    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(text.trim_end_matches('='))
                        .map_err(|_| {
                            issuer_error(format!(
                                "spec.acme.externalAccountBinding.keySecretRef: the HMAC key in Secret {name} ({k}) is not base64url, as CAs hand it out"
                            ))
                        })?;
                    Some(ExternalAccountKey::new(b.key_id.clone(), &mac))
                }
            };
            // The client makes the key it registers (and an external account binding signs); it is kept once
            // registered. An account whose key cannot be kept is deactivated rather than left behind.
            let new = NewAccount { contact: &contact_refs, terms_of_service_agreed: true, only_return_existing: false };
            let (account, credentials) = builder()
                .create(&new, acme.server.clone(), eab.as_ref())
                .await
                .map_err(|e| refused("registering the ACME account", e))?;
            let der = credentials.private_key().secret_pkcs8_der().to_vec();
            drop::<AccountCredentials>(credentials);
            if let Err(e) = write_key(store, ns, &sel.name, key_name, &der) {
                if let Err(d) = account.deactivate().await {
                    tracing::warn!(secret = %sel.name, "deactivating the account whose key could not be kept: {d}");
                }
                return Err(e);
            }
            let status = AcmeIssuerStatus {
                uri: Some(account.id().to_string()),
                last_registered_email: acme.email.clone(),
                last_private_key_hash: Some(key_hash(&der)),
            };
            Ok((account, status))
        }
    }
}

/// The account of an Issuer that registered one, looked up by its key (newAccount with the key the server knows
/// answers the same account; a server that forgot it registers it again, so a reset test server or a deleted
/// account heals without a hand).
pub async fn registered(
    store: &Store,
    issuer: &Issuer,
    acme: &AcmeIssuer,
    http: &AcmeHttp,
) -> Result<Account, IssueError> {
    let ns = issuer.secrets_namespace();
    let sel = &acme.private_key_secret_ref;
    let Some(pem) = secret_value(store, ns, &sel.name, sel.key_or(ACCOUNT_KEY))? else {
        return Err(issuer_error(format!(
            "{} {} has no ACME account key yet (Secret {}/{}; see its Ready condition)",
            issuer.kind,
            issuer.metadata.name,
            issuer.secrets_namespace(),
            sel.name
        )));
    };
    let key = Key::from_pem(&pem).map_err(|e| issuer_error(format!("the account key: {e}")))?;
    let ikey = instant_acme::Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(key.pkcs8.clone()))
        .map_err(|e| super::acme_error("reading the account key", &e, http))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8));
    let account = Account::builder_with_http(Box::new(http.clone()))
        .create_from_key((ikey, der), acme.server.clone())
        .await
        .map(|(a, _)| a)
        .map_err(|e| eab_hint(super::acme_error("reaching the ACME account", &e, http), &sel.name))?;
    // A server that had forgotten the account registered it again: its contact is set again.
    let known = issuer.status.as_ref().and_then(|s| s.acme.as_ref()).and_then(|a| a.uri.as_deref());
    if known != Some(account.id()) {
        if let Some(email) = &acme.email {
            let contact = format!("mailto:{email}");
            if let Err(e) = account.update_contacts(&[contact.as_str()]).await {
                tracing::warn!(issuer = %issuer.metadata.name, "setting the contact of the account registered again: {e}");
            }
        }
    }
    Ok(account)
}

/// A refusal for want of an external account binding says what to do: the binding is sent when an account key
/// is made, so a key made elsewhere (or an account the server forgot) needs the Secret deleted.
fn eab_hint(e: IssueError, secret: &str) -> IssueError {
    match e {
        IssueError::Acme { message, retry_after, rejected } if message.contains("externalAccountRequired") => {
            IssueError::Acme {
                message: format!(
                    "{message}; the binding (spec.acme.externalAccountBinding) is sent when Capstan makes the account key: delete Secret {secret} to have a key made and registered with it"
                ),
                retry_after,
                rejected,
            }
        }
        other => other,
    }
}

/// Whether an account URL belongs to the server of a directory URL (same scheme, host and port).
fn same_origin(a: &str, b: &str) -> bool {
    let origin = |u: &str| -> String {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        format!("{scheme}://{}", rest.split('/').next().unwrap_or_default().to_ascii_lowercase())
    };
    origin(a) == origin(b)
}

/// Writes the account key into its Secret (PKCS#8 PEM), keeping the Secret's other values.
fn write_key(store: &Store, namespace: &str, name: &str, key: &str, der: &[u8]) -> Result<(), IssueError> {
    let k = ObjectKey::new("Secret", namespace, name);
    let existing = store.get(&k).map_err(|e| issuer_error(format!("reading {k}: {e}")))?;
    let pem = pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, der)
        .map_err(|e| IssueError::Key(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    let mut secret = existing.unwrap_or_else(|| {
        json!({
            "apiVersion": capstan_model::meta::API_VERSION,
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "Opaque", "data": {}},
        })
    });
    if !secret["spec"]["data"].is_object() {
        secret["spec"]["data"] = json!({});
    }
    secret["spec"]["data"][key] = Value::String(b64);
    if let Some(m) = secret["metadata"].as_object_mut() {
        for k in ["resourceVersion", "generation", "uid", "creationTimestamp", "managedFields"] {
            m.remove(k);
        }
    }
    if let Some(o) = secret.as_object_mut() {
        o.remove("status");
    }
    store.apply(vec![secret]).map_err(|e| issuer_error(format!("writing the account key to Secret {name}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn account_urls_are_matched_to_their_server() {
        assert!(super::same_origin("https://127.0.0.1:14000/my-account/1", "https://127.0.0.1:14000/dir"));
        assert!(!super::same_origin("https://127.0.0.1:14000/my-account/1", "https://127.0.0.1:14001/dir"));
        assert!(!super::same_origin("https://acme-staging.example/a/1", "https://acme.example/dir"));
    }
}
