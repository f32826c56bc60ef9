//! API keys: who may act on which org/workspace.
//!
//! Keys come from `[admin] api_keys` (every org), `[[admin.scoped_keys]]` (one org, optionally one
//! workspace) and, when no `api_keys` are configured, one generated key kept in the store. A
//! presented key is compared against every configured key in constant time (`subtle`), and the
//! loop never exits early, so response timing says nothing about how close a guess was. Keys
//! are never logged: [`crate::config::ApiKey`] redacts itself.

use subtle::{Choice, ConstantTimeEq};
use switchboard_routing::model::Scope;

use crate::config::{AdminConfig, ApiKey};

/// Header carrying the key (seed 000–002); `xi-api-key` (seed 003) is accepted too.
pub const API_KEY_HEADER: &str = "x-api-key";
pub const ELEVENLABS_KEY_HEADER: &str = "xi-api-key";

/// Store setting under which a generated admin key is kept.
pub const GENERATED_KEY_SETTING: &str = "admin.generated_api_key";

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A key from `api_keys` (or the generated one): every org.
    Global,
    /// A scoped key: only `org_id`, and only `workspace_id` when set.
    Scoped {
        org_id: String,
        workspace_id: Option<String>,
    },
}

impl Principal {
    /// Whether this principal may see `scope`. A `false` is answered 404, never 403, so that
    /// a scoped key cannot probe which orgs exist.
    pub fn may_access(&self, scope: &Scope) -> bool {
        match self {
            Principal::Global => true,
            Principal::Scoped {
                org_id,
                workspace_id,
            } => {
                *org_id == scope.org_id
                    && workspace_id
                        .as_ref()
                        .is_none_or(|w| *w == scope.workspace_id)
            }
        }
    }

    /// The scope of an org-less path (seed 003's `/v1/convai/…`): a workspace-scoped key's own.
    pub fn implicit_scope(&self) -> Option<Scope> {
        match self {
            Principal::Scoped {
                org_id,
                workspace_id: Some(ws),
            } => Some(Scope::new(org_id, ws)),
            _ => None,
        }
    }

    /// What `created_by` / `updated_by` record: the kind of key, never the key.
    pub fn actor(&self) -> String {
        match self {
            Principal::Global => "admin-api-key".to_owned(),
            Principal::Scoped {
                org_id,
                workspace_id: None,
            } => format!("org-key:{org_id}"),
            Principal::Scoped {
                org_id,
                workspace_id: Some(ws),
            } => format!("org-key:{org_id}/{ws}"),
        }
    }
}

/// The configured keys, ready for constant-time lookup.
#[derive(Debug, Clone)]
pub struct Keyring {
    entries: Vec<(ApiKey, Principal)>,
}

impl Keyring {
    /// Builds the keyring from config; `generated` is the stored key used when `api_keys` is empty.
    pub fn new(config: &AdminConfig, generated: Option<ApiKey>) -> Self {
        let global = config.api_keys.iter().cloned().chain(generated);
        let mut entries: Vec<(ApiKey, Principal)> =
            global.map(|k| (k, Principal::Global)).collect();
        entries.extend(config.scoped_keys.iter().map(|s| {
            (
                s.key.clone(),
                Principal::Scoped {
                    org_id: s.org_id.clone(),
                    workspace_id: s.workspace_id.clone(),
                },
            )
        }));
        Self { entries }
    }

    /// The principal of `presented`, if it is a configured key. Compares against every key.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Principal> {
        let mut found: Option<&Principal> = None;
        for (key, principal) in &self.entries {
            let equal: Choice = key.expose().as_bytes().ct_eq(presented);
            // Branching on the (already computed) result of one comparison leaks only which
            // key matched, which the response reveals anyway; the comparison itself is constant.
            if bool::from(equal) && found.is_none() {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// Generates a fresh admin key: 32 random bytes, URL-safe base64, with a recognisable prefix.
pub fn generate_key() -> ApiKey {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    ApiKey::new(format!(
        "sb_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScopedKey;

    fn keyring() -> Keyring {
        let config = AdminConfig {
            api_keys: vec![ApiKey::new("global-1")],
            scoped_keys: vec![
                ScopedKey {
                    key: ApiKey::new("acme-key"),
                    org_id: "acme".into(),
                    workspace_id: None,
                },
                ScopedKey {
                    key: ApiKey::new("acme-ws"),
                    org_id: "acme".into(),
                    workspace_id: Some("w1".into()),
                },
            ],
            ..AdminConfig::default()
        };
        Keyring::new(&config, None)
    }

    #[test]
    fn keys_resolve_to_their_principal_and_nothing_else_does() {
        let k = keyring();
        assert_eq!(k.authenticate(b"global-1"), Some(Principal::Global));
        assert!(matches!(
            k.authenticate(b"acme-key"),
            Some(Principal::Scoped { .. })
        ));
        assert_eq!(k.authenticate(b"global-"), None);
        assert_eq!(k.authenticate(b"global-12"), None);
        assert_eq!(k.authenticate(b""), None);
    }

    #[test]
    fn scoped_keys_see_only_their_org_and_workspace() {
        let k = keyring();
        let org = k.authenticate(b"acme-key").unwrap();
        let ws = k.authenticate(b"acme-ws").unwrap();
        assert!(org.may_access(&Scope::new("acme", "anything")));
        assert!(!org.may_access(&Scope::new("other", "anything")));
        assert!(ws.may_access(&Scope::new("acme", "w1")));
        assert!(!ws.may_access(&Scope::new("acme", "w2")));
        assert_eq!(ws.implicit_scope(), Some(Scope::new("acme", "w1")));
        assert_eq!(org.implicit_scope(), None);
        assert_eq!(Principal::Global.implicit_scope(), None);
    }

    #[test]
    fn generated_keys_are_distinct_and_long() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.expose().len() > 40);
    }
}
