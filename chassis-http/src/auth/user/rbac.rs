//! [`RbacConfig`]: which claim holds an end user's roles, and which permissions each role grants.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::principal::UserPrincipal;
use crate::auth::claims::check_scope;
use crate::auth::error::{AuthError, AuthErrorKind};
use crate::auth::verifier::Verified;

/// The claim roles are read from unless configured: `roles` (Keycloak client roles mapped to a
/// flat claim, Auth0 and Entra ID app roles). MicroProfile JWT names it `groups`.
pub const DEFAULT_ROLE_CLAIM: &str = "roles";

/// Most roles read from one token; a token with more is refused as malformed.
const MAX_ROLES: usize = 256;

/// Role-based access: where a token's roles are, and the permissions each role grants.
///
/// Deserialisable, so it comes from the service's configuration file. In TOML:
///
/// ```toml
/// [rbac]
/// role_claims = ["roles"]        # the default; ["groups"] for MicroProfile JWT
///
/// [rbac.roles]
/// customer = ["orders:read:own", "orders:write"]
/// admin = ["orders:read:any", "orders:write"]
/// ```
///
/// A role the map does not name grants nothing (it is still listed in
/// [`UserPrincipal::roles`]). Permissions are opaque strings compared exactly; they appear in
/// the `scope` of a 403's `WWW-Authenticate` challenge, so they should be RFC 6749 scope tokens
/// (no spaces, quotes or backslashes): [`validate`](Self::validate) checks that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RbacConfig {
    /// The claims a token's roles are read from, combined. A claim is looked up by its full
    /// name first (so namespaced claims such as `https://example.com/roles` work); a name with
    /// dots that is not a claim is followed as a path into nested objects (Keycloak's
    /// `realm_access.roles`). The value is an array of strings or one space-separated string.
    /// Defaults to `["roles"]` ([`DEFAULT_ROLE_CLAIM`]).
    pub role_claims: Vec<String>,
    /// The permissions of each role.
    pub roles: BTreeMap<String, BTreeSet<String>>,
}

impl Default for RbacConfig {
    fn default() -> Self {
        Self {
            role_claims: vec![DEFAULT_ROLE_CLAIM.to_owned()],
            roles: BTreeMap::new(),
        }
    }
}

impl RbacConfig {
    /// No roles mapped, roles read from the `roles` claim.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants `role` these permissions (in addition to any it has).
    pub fn role(mut self, role: impl Into<String>, permissions: &[&str]) -> Self {
        self.roles
            .entry(role.into())
            .or_default()
            .extend(permissions.iter().map(|p| (*p).to_owned()));
        self
    }

    /// Reads roles from `claims` instead (e.g. `&["groups"]` for MicroProfile JWT). Defaults to
    /// `["roles"]`.
    pub fn role_claims(mut self, claims: &[&str]) -> Self {
        self.role_claims = claims.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Checks the configuration: at least one role claim, and every permission a valid RFC 6749
    /// scope token (so it can be named in a `WWW-Authenticate` challenge).
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.role_claims.is_empty() || self.role_claims.iter().any(String::is_empty) {
            return Err(AuthError::invalid_config(
                "RBAC needs at least one non-empty role claim",
            ));
        }
        for (role, permissions) in &self.roles {
            for permission in permissions {
                check_scope(permission).map_err(|_| {
                    AuthError::invalid_config(format!(
                        "role {role:?}: permission {permission:?} is not a scope token (RFC 6749 §3.3)"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// The union of the permissions of `roles`.
    pub fn permissions_of<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        roles
            .into_iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect()
    }

    /// The roles of a token's claims (see [`role_claims`](Self::role_claims)), deduplicated,
    /// in the order found.
    pub(crate) fn roles_in(&self, claims: &Map<String, Value>) -> Result<Vec<String>, AuthError> {
        let mut roles: Vec<String> = Vec::new();
        for name in &self.role_claims {
            let Some(value) = lookup(claims, name) else {
                continue;
            };
            let invalid = || {
                AuthError::new(AuthErrorKind::InvalidClaim {
                    claim: name.chars().take(64).collect(),
                })
            };
            let found: Vec<&str> = match value {
                Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().ok_or_else(invalid))
                    .collect::<Result<_, _>>()?,
                Value::String(s) => s.split_ascii_whitespace().collect(),
                Value::Null => Vec::new(),
                _ => return Err(invalid()),
            };
            for role in found {
                if !role.is_empty() && !roles.iter().any(|r| r == role) {
                    roles.push(role.to_owned());
                }
            }
            if roles.len() > MAX_ROLES {
                return Err(invalid());
            }
        }
        Ok(roles)
    }

    /// The principal of a verified token: its subject, its roles and their permissions.
    pub(crate) fn principal(&self, verified: &Verified) -> Result<UserPrincipal, AuthError> {
        let roles = self.roles_in(&verified.claims)?;
        let permissions = self.permissions_of(roles.iter().map(String::as_str));
        Ok(UserPrincipal {
            subject: verified.identity.subject.clone(),
            issuer: verified.identity.issuer.clone(),
            roles,
            permissions,
            expires_at: verified.identity.expires_at,
        })
    }
}

/// The claim `name`, or the value at the dotted path `name` when no claim has that name.
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn roles_from_arrays_strings_paths_and_namespaced_claims() {
        let rbac = RbacConfig::new().role_claims(&[
            "roles",
            "groups",
            "realm_access.roles",
            "https://shop.example/roles",
        ]);
        let c = claims(json!({
            "roles": ["customer", "customer"],
            "groups": "admin auditor",
            "realm_access": { "roles": ["offline_access"] },
            "https://shop.example/roles": ["support"],
        }));
        assert_eq!(
            rbac.roles_in(&c).unwrap(),
            ["customer", "admin", "auditor", "offline_access", "support"]
        );
        assert!(rbac.roles_in(&claims(json!({}))).unwrap().is_empty());
        for bad in [
            json!({"roles": 7}),
            json!({"roles": ["a", 1]}),
            json!({"roles": {"a": 1}}),
        ] {
            let err = rbac.roles_in(&claims(bad)).unwrap_err();
            assert!(
                matches!(err.kind(), AuthErrorKind::InvalidClaim { claim } if claim == "roles")
            );
        }
        let many: Vec<String> = (0..=MAX_ROLES).map(|i| format!("r{i}")).collect();
        assert!(rbac.roles_in(&claims(json!({ "roles": many }))).is_err());
    }

    #[test]
    fn permissions_are_the_union_of_known_roles() {
        let rbac = RbacConfig::new()
            .role("customer", &["orders:read:own", "orders:write"])
            .role("admin", &["orders:read:any", "orders:write"]);
        assert_eq!(
            rbac.permissions_of(["customer", "admin", "nobody"]),
            BTreeSet::from([
                "orders:read:any".to_owned(),
                "orders:read:own".to_owned(),
                "orders:write".to_owned()
            ])
        );
        assert!(rbac.permissions_of(["nobody"]).is_empty());
    }

    #[test]
    fn deserialises_and_validates() {
        let rbac: RbacConfig = serde_json::from_value(json!({
            "role_claims": ["groups"],
            "roles": { "customer": ["orders:read:own"] }
        }))
        .unwrap();
        assert_eq!(rbac.role_claims, ["groups"]);
        assert!(rbac.validate().is_ok());
        let defaults: RbacConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(defaults.role_claims, [DEFAULT_ROLE_CLAIM]);
        assert!(serde_json::from_value::<RbacConfig>(json!({"role": {}})).is_err());
        assert!(
            RbacConfig::new()
                .role("x", &["two words"])
                .validate()
                .is_err()
        );
        assert!(RbacConfig::new().role_claims(&[]).validate().is_err());
    }
}
