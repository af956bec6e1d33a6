//! [`UserPrincipal`]: the verified end user a request is made for, with roles and permissions.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::auth::error::{AuthError, AuthErrorKind};

/// The verified end user of a request, inserted as a request extension by
/// [`RequireUserTokenLayer`](super::RequireUserTokenLayer).
///
/// Under axum, extract it with `Extension<UserPrincipal>`. Check permissions in a handler with
/// [`require`](Self::require), whose error converts into the chassis
/// [`ApiError`](crate::ApiError) (403 `insufficient_scope`), or per route with
/// [`RequirePermissionLayer`](super::RequirePermissionLayer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserPrincipal {
    /// The user (`sub`).
    pub subject: String,
    /// Who vouched for it (`iss`).
    pub issuer: String,
    /// The roles the token lists (see [`RbacConfig::role_claims`](super::RbacConfig::role_claims)),
    /// including roles the role map does not know.
    pub roles: Vec<String>,
    /// The permissions the roles grant.
    pub permissions: BTreeSet<String>,
    /// When the token expires.
    pub expires_at: SystemTime,
}

impl UserPrincipal {
    /// Whether the token lists `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the roles grant `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// `Ok` when the roles grant `permission`; otherwise
    /// [`InsufficientScope`](AuthErrorKind::InsufficientScope) naming it (a 403 with
    /// `error="insufficient_scope"` as an [`ApiError`](crate::ApiError)).
    pub fn require(&self, permission: &str) -> Result<(), AuthError> {
        self.require_all(&[permission])
    }

    /// `Ok` when the roles grant every one of `permissions`; otherwise
    /// [`InsufficientScope`](AuthErrorKind::InsufficientScope) naming those missing.
    pub fn require_all(&self, permissions: &[&str]) -> Result<(), AuthError> {
        let missing: Vec<String> = permissions
            .iter()
            .filter(|p| !self.has_permission(p))
            .map(|p| (*p).to_owned())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AuthError::new(AuthErrorKind::InsufficientScope { missing }))
        }
    }

    /// The first of `permissions` the roles grant (e.g. `["orders:read:any",
    /// "orders:read:own"]`: which kind of access the user has); otherwise
    /// [`InsufficientScope`](AuthErrorKind::InsufficientScope) naming them all.
    pub fn require_any<'a>(&self, permissions: &[&'a str]) -> Result<&'a str, AuthError> {
        permissions
            .iter()
            .find(|p| self.has_permission(p))
            .copied()
            .ok_or_else(|| {
                AuthError::new(AuthErrorKind::InsufficientScope {
                    missing: permissions.iter().map(|p| (*p).to_owned()).collect(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiError;
    use http::StatusCode;

    fn principal(permissions: &[&str]) -> UserPrincipal {
        UserPrincipal {
            subject: "c-1".into(),
            issuer: "idp".into(),
            roles: vec!["customer".into()],
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn require_answers_403_insufficient_scope() {
        let p = principal(&["orders:read:own"]);
        assert!(p.has_role("customer"));
        assert!(p.require("orders:read:own").is_ok());
        assert_eq!(
            p.require_any(&["orders:read:any", "orders:read:own"])
                .unwrap(),
            "orders:read:own"
        );
        let err = p
            .require_all(&["orders:read:own", "orders:read:any"])
            .unwrap_err();
        assert_eq!(
            err.kind(),
            &AuthErrorKind::InsufficientScope {
                missing: vec!["orders:read:any".into()]
            }
        );
        let api = ApiError::from(err);
        assert_eq!(api.status(), StatusCode::FORBIDDEN);
        assert_eq!(api.code(), "insufficient_scope");
        let challenge = api.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("scope=\"orders:read:any\""),
            "{challenge}"
        );
        assert!(p.require_any(&["orders:write"]).is_err());
    }
}
