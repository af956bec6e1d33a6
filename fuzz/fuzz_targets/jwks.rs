//! JWKS documents (chassis_http::auth::KeySet::from_jwks_json, what JwksKeySource fetches):
//! unusable keys are skipped, never more keys than the document holds, every kept key has a
//! printable key id of 1 to 128 characters and an asymmetric algorithm, and each key refuses a
//! token that was not signed with it as a bad token (401), never as a server error.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chassis_http::auth::{Algorithm, JwkSet, KeySet, TokenVerifier};
use futures_executor::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::from_jwks_json(data) else {
        return;
    };
    let doc: JwkSet = serde_json::from_slice(data).expect("KeySet accepted it");
    assert!(set.len() <= doc.keys.len());
    let kids: Vec<String> = set.kids().map(str::to_owned).collect();
    for kid in &kids {
        assert!(!kid.is_empty() && kid.len() <= 128 && !kid.chars().any(char::is_control));
        let key = set.get(kid).expect("a listed kid");
        assert_eq!(key.kid(), kid);
        assert!(
            !matches!(
                key.algorithm(),
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ),
            "a JWKS document supplied a shared secret"
        );
    }

    if kids.is_empty() {
        return;
    }
    let verifier = TokenVerifier::builder("billing")
        .trust_issuer("orders")
        .keys(set.clone())
        .build()
        .expect("a verifier with keys");
    for kid in kids.iter().take(4) {
        let alg = set.get(kid).unwrap().algorithm();
        let header = serde_json::json!({ "alg": alg, "kid": kid, "typ": "JWT" });
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"orders","sub":"x","aud":"billing"}"#),
            URL_SAFE_NO_PAD.encode([7u8; 64]),
        );
        let err = block_on(verifier.verify(&token)).expect_err("a forged signature verified");
        assert!(
            err.is_rejection() || err.status().is_server_error(),
            "{err}"
        );
    }
});
