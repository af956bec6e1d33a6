//! Signing keys (private, with a key id), verification keys (public, pinned to one algorithm)
//! and the [`KeySet`] a verifier looks key ids up in.
//!
//! Keys are asymmetric by default: Ed25519 (`EdDSA`), P-256 (`ES256`) or RSA (`RS256`, or
//! `PS256` when asked for), loaded from PEM (a file, an environment variable, bytes), from JWKs,
//! or (Ed25519, P-256) generated in process. HS256 exists only behind the explicitly named
//! [`SigningKey::hs256_shared_secret`] / [`VerificationKey::hs256_shared_secret`].
//!
//! Every key carries a key id (`kid`). Unless one is given, the kid of an asymmetric key is its
//! RFC 7638 JWK thumbprint (SHA-256; for RSA over the members `e`, `kty`, `n`), so it is stable
//! across restarts and identical on issuer and verifier.
//!
//! The algorithm belongs to the key, never to the token: a verifier looks the token's `kid` up
//! and accepts only the algorithm that key was loaded with. An RSA key is pinned to `RS256` or
//! to `PS256`, never both, and its modulus must be 2048 to 4096 bits
//! ([`MIN_RSA_MODULUS_BITS`], [`MAX_RSA_MODULUS_BITS`]).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};

use super::error::{AuthError, AuthErrorKind};

/// Shortest HS256 secret accepted: 256 bits, the size of the HMAC-SHA-256 output (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Shortest RSA modulus accepted, in bits (RFC 7518 §3.3 and §3.5 require at least 2048).
pub const MIN_RSA_MODULUS_BITS: usize = 2048;

/// Longest RSA modulus accepted, in bits: the RSA implementation refuses longer public keys at
/// verification, so they are refused when loaded instead.
pub const MAX_RSA_MODULUS_BITS: usize = 4096;

/// The RSA algorithms a key can be pinned to.
const RSA_ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::PS256];

// rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters, the AlgorithmIdentifier of RSA keys
// in PKCS#8 and SPKI (RFC 8017 appendix C).
const RSA_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

// DER prefixes of the fixed-shape structures we build by hand (RFC 8410 for Ed25519, RFC 5915 +
// RFC 5480 for P-256). Building them is simpler than pulling in a DER encoder for two shapes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_ALGORITHM_ID: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// A private key that signs tokens, with its key id and pinned algorithm.
///
/// Asymmetric by default: Ed25519 (`EdDSA`), P-256 (`ES256`) or RSA (`RS256`/`PS256`, 2048 to
/// 4096 bits) from PEM (a file, an environment variable, bytes), or Ed25519/P-256 generated in
/// process; HS256 only through [`hs256_shared_secret`](Self::hs256_shared_secret). Unless one is given, the key id of an
/// asymmetric key is its RFC 7638 JWK thumbprint (SHA-256), so it is stable across restarts and
/// identical on issuer and verifier.
///
/// Cheap to clone (shared). `Debug` never prints key material.
#[derive(Clone)]
pub struct SigningKey {
    inner: Arc<SigningKeyInner>,
}

struct SigningKeyInner {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// The public half as a JWK (with `kid`, `alg`, `use`); `None` for HS256 secrets, which are
    /// never published.
    public: Option<Jwk>,
    verification: VerificationKey,
}

impl SigningKey {
    /// Generates a fresh Ed25519 key (from the thread-local CSPRNG). Its kid is its thumbprint.
    pub fn generate_ed25519() -> Result<Self, AuthError> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&ED25519_PKCS8_PREFIX);
        der.extend_from_slice(&seed);
        Self::from_der(Algorithm::EdDSA, &der, None)
    }

    /// Generates a fresh P-256 (ES256) key (from the thread-local CSPRNG). Its kid is its
    /// thumbprint.
    pub fn generate_es256() -> Result<Self, AuthError> {
        // A random 256-bit string is a valid scalar unless it is 0 or >= the group order, which
        // happens with probability ~2^-32; the curve library rejects those and we draw again.
        for _ in 0..8 {
            let mut scalar = [0u8; 32];
            rand::fill(&mut scalar);
            let mut der = Vec::with_capacity(67);
            der.extend_from_slice(&[0x30, 0x41, 0x02, 0x01, 0x00]);
            der.extend_from_slice(&P256_ALGORITHM_ID);
            der.extend_from_slice(&[0x04, 0x27, 0x30, 0x25, 0x02, 0x01, 0x01, 0x04, 0x20]);
            der.extend_from_slice(&scalar);
            if let Ok(key) = Self::from_der(Algorithm::ES256, &der, None) {
                return Ok(key);
            }
        }
        Err(AuthError::invalid_key("could not generate a P-256 key"))
    }

    /// Loads an Ed25519, P-256 or RSA private key from PEM: PKCS#8
    /// (`-----BEGIN PRIVATE KEY-----`, as written by `openssl genpkey -algorithm ed25519`,
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` or
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`) or, for RSA, PKCS#1
    /// (`-----BEGIN RSA PRIVATE KEY-----`).
    ///
    /// The algorithm follows from the key type: EdDSA, ES256, and **RS256** for RSA (for
    /// PS256 use [`from_pem_with_algorithm`](Self::from_pem_with_algorithm)). An RSA modulus
    /// outside 2048..=4096 bits is [`AuthErrorKind::RsaKeySize`]. The kid is the thumbprint.
    pub fn from_pem(pem: impl AsRef<[u8]>) -> Result<Self, AuthError> {
        let pem = pem.as_ref();
        if let Ok(key) = EncodingKey::from_ed_pem(pem) {
            return Self::from_der(Algorithm::EdDSA, key.as_bytes(), None);
        }
        if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            return Self::from_der(Algorithm::ES256, key.as_bytes(), None);
        }
        match EncodingKey::from_rsa_pem(pem) {
            Ok(key) => Self::from_der(Algorithm::RS256, key.as_bytes(), None),
            Err(e) => Err(AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: "not a PKCS#8 Ed25519, P-256 or RSA (PKCS#8 or PKCS#1) private key"
                        .into(),
                },
                e,
            )),
        }
    }

    /// Loads a private key from PEM (see [`from_pem`](Self::from_pem)) pinned to `alg`, which
    /// must fit the key type: `RS256` or `PS256` for an RSA key, `EdDSA` for Ed25519, `ES256`
    /// for P-256.
    pub fn from_pem_with_algorithm(
        pem: impl AsRef<[u8]>,
        alg: Algorithm,
    ) -> Result<Self, AuthError> {
        let key = Self::from_pem(pem)?;
        key.with_algorithm(alg)
    }

    /// The same key pinned to `alg`: only RSA keys have a choice (`RS256` or `PS256`); for
    /// other keys `alg` must be the one they have.
    pub fn with_algorithm(self, alg: Algorithm) -> Result<Self, AuthError> {
        if alg == self.inner.alg {
            return Ok(self);
        }
        if !(RSA_ALGORITHMS.contains(&alg) && RSA_ALGORITHMS.contains(&self.inner.alg)) {
            return Err(AuthError::invalid_key(format!(
                "a {:?} key cannot sign {alg:?}",
                self.inner.alg
            )));
        }
        // The thumbprint does not depend on the algorithm, so a thumbprint kid stays valid.
        Self::from_der(
            alg,
            self.inner.encoding.as_bytes(),
            Some(self.inner.kid.clone()),
        )
    }

    /// Loads a private key from a PEM file (see [`from_pem`](Self::from_pem)).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        Self::from_pem(read_key_file(path.as_ref())?)
    }

    /// Loads a private key from the environment variable `var`, which holds the PEM text
    /// (see [`from_pem`](Self::from_pem)). When `{var}_KID` is set, it is the key id; when
    /// `{var}_ALG` is set (`RS256`, `PS256`, …), it is the algorithm.
    pub fn from_env(var: &str) -> Result<Self, AuthError> {
        Self::from_vars(var, |name| std::env::var(name).ok())
    }

    fn from_vars(var: &str, get: impl Fn(&str) -> Option<String>) -> Result<Self, AuthError> {
        let Some(pem) = get(var) else {
            return Err(AuthError::invalid_key(format!(
                "environment variable {var} is not set"
            )));
        };
        let mut key = Self::from_pem(pem)?;
        if let Some(alg) = get(&format!("{var}_ALG")).filter(|a| !a.is_empty()) {
            let alg = alg.parse::<Algorithm>().map_err(|e| {
                AuthError::with_source(
                    AuthErrorKind::InvalidKey {
                        reason: format!("{var}_ALG is not an algorithm"),
                    },
                    e,
                )
            })?;
            key = key.with_algorithm(alg)?;
        }
        match get(&format!("{var}_KID")) {
            Some(kid) if !kid.is_empty() => key.with_kid(kid),
            _ => Ok(key),
        }
    }

    /// An HS256 shared-secret key. Only for setups where every party shares one secret: any
    /// verifier holding it can also mint tokens. The secret must be at least
    /// [`MIN_HS256_SECRET_LEN`] bytes and the kid is required (a thumbprint would reveal nothing
    /// but is not standard for secrets).
    pub fn hs256_shared_secret(kid: impl Into<String>, secret: &[u8]) -> Result<Self, AuthError> {
        let kid = kid.into();
        check_kid(&kid)?;
        let verification = VerificationKey::hs256_shared_secret(kid.clone(), secret)?;
        Ok(Self {
            inner: Arc::new(SigningKeyInner {
                kid,
                alg: Algorithm::HS256,
                encoding: EncodingKey::from_secret(secret),
                public: None,
                verification,
            }),
        })
    }

    fn from_der(alg: Algorithm, der: &[u8], kid: Option<String>) -> Result<Self, AuthError> {
        let encoding = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_der(der),
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_der(der),
            _ => EncodingKey::from_ec_der(der),
        };
        // Deriving the public JWK parses the private key, so this also validates it.
        let mut public = Jwk::from_encoding_key(&encoding, alg).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: format!("not a usable {alg:?} private key"),
                },
                e,
            )
        })?;
        if let AlgorithmParameters::RSA(p) = &public.algorithm {
            check_rsa_size(kid.as_deref().unwrap_or("-"), &p.n)?;
        }
        let kid = match kid {
            Some(kid) => kid,
            None => public.thumbprint(ThumbprintHash::SHA256).map_err(|e| {
                AuthError::with_source(
                    AuthErrorKind::InvalidKey {
                        reason: "cannot compute the key thumbprint".into(),
                    },
                    e,
                )
            })?,
        };
        check_kid(&kid)?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::from(alg));
        let verification = VerificationKey::from_jwk(&public)?;
        Ok(Self {
            inner: Arc::new(SigningKeyInner {
                kid,
                alg,
                encoding,
                public: Some(public),
                verification,
            }),
        })
    }

    /// The same key under another key id.
    pub fn with_kid(self, kid: impl Into<String>) -> Result<Self, AuthError> {
        let kid = kid.into();
        check_kid(&kid)?;
        if self.inner.alg == Algorithm::HS256 {
            // The secret is only reachable through the encoding key's bytes.
            return Self::hs256_shared_secret(kid, self.inner.encoding.as_bytes());
        }
        Self::from_der(self.inner.alg, self.inner.encoding.as_bytes(), Some(kid))
    }

    /// The key id (`kid`) tokens signed with this key carry.
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.alg
    }

    /// The public key as a JWK (with `kid`, `alg` and `use: sig`); `None` for HS256.
    pub fn public_jwk(&self) -> Option<&Jwk> {
        self.inner.public.as_ref()
    }

    /// The key that verifies this key's signatures (the public key; for HS256 the secret).
    pub fn verification_key(&self) -> VerificationKey {
        self.inner.verification.clone()
    }

    /// The private key as PKCS#8 PEM, to store it for the next start. **Secret.** `None` for
    /// HS256.
    pub fn to_pkcs8_pem(&self) -> Option<String> {
        self.inner.public.as_ref()?;
        let der = self.inner.encoding.as_bytes();
        if RSA_ALGORITHMS.contains(&self.inner.alg) {
            // The RSA encoding key holds the PKCS#1 structure; PKCS#8 wraps it (RFC 5208).
            let mut body = vec![0x02, 0x01, 0x00];
            body.extend_from_slice(&RSA_ALGORITHM_ID);
            body.extend(der_tlv(0x04, der));
            return Some(pem_encode("PRIVATE KEY", &der_tlv(0x30, &body)));
        }
        Some(pem_encode("PRIVATE KEY", der))
    }

    /// Signs `claims` as a compact JWS with this key: header `alg` (the key's), `kid` and
    /// `typ: JWT`. For tokens other than service tokens (which [`TokenIssuer`](super::TokenIssuer)
    /// builds), e.g. end-user tokens of a test identity provider: the claims are signed as
    /// given, nothing is added or checked.
    pub fn sign_claims<T: serde::Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        let mut header = jsonwebtoken::Header::new(self.inner.alg);
        header.kid = Some(self.inner.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.inner.encoding)
            .map_err(|e| AuthError::with_source(AuthErrorKind::Signing, e))
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), for verifiers configured with
    /// static keys. `None` for HS256.
    pub fn public_key_pem(&self) -> Option<String> {
        let jwk = self.inner.public.as_ref()?;
        let der = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) => {
                let x = URL_SAFE_NO_PAD.decode(&p.x).ok()?;
                let mut der = ED25519_SPKI_PREFIX.to_vec();
                der.extend_from_slice(&x);
                der
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let x = URL_SAFE_NO_PAD.decode(&p.x).ok()?;
                let y = URL_SAFE_NO_PAD.decode(&p.y).ok()?;
                let mut der = vec![0x30, 0x59];
                der.extend_from_slice(&P256_ALGORITHM_ID);
                der.extend_from_slice(&[0x03, 0x42, 0x00, 0x04]);
                der.extend_from_slice(&x);
                der.extend_from_slice(&y);
                der
            }
            AlgorithmParameters::RSA(p) => rsa_spki(
                &URL_SAFE_NO_PAD.decode(&p.n).ok()?,
                &URL_SAFE_NO_PAD.decode(&p.e).ok()?,
            ),
            _ => return None,
        };
        Some(pem_encode("PUBLIC KEY", &der))
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.inner.encoding
    }
}

crate::error::debug_inner!(SigningKey { kid, alg, .. });

/// A key that verifies tokens: a key id, the one algorithm it accepts, and the key.
///
/// Cheap to clone. `Debug` never prints key material.
#[derive(Clone)]
pub struct VerificationKey {
    kid: Arc<str>,
    alg: Algorithm,
    key: DecodingKey,
}

impl VerificationKey {
    /// Builds a verification key from a public JWK (as found in a JWKS document).
    ///
    /// The JWK must have a `kid`. The algorithm is the JWK's `alg` when present, otherwise it
    /// follows from the key type (`OKP`/Ed25519 -> EdDSA, `EC`/P-256 -> ES256, `RSA` -> RS256).
    ///
    /// An RSA JWK (`kty: RSA`, members `n` and `e`) is pinned to its `alg`, `RS256` or `PS256`
    /// (other RSA algorithms are not accepted). Without `alg` it is pinned to **RS256**, the
    /// algorithm identity providers publish RSA keys for (and the one OpenID Connect requires
    /// them to support); a provider signing with PS256 must say so in the JWK. Its modulus must
    /// be 2048 to 4096 bits ([`AuthErrorKind::RsaKeySize`] otherwise).
    ///
    /// Symmetric (`oct`) keys and encryption keys (`use: enc`) are rejected: a published secret
    /// would let anyone mint tokens.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, AuthError> {
        let kid = match jwk.common.key_id.as_deref() {
            Some(kid) => kid,
            None => return Err(AuthError::invalid_key("JWK without a key id (kid)")),
        };
        check_kid(kid)?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(AuthError::invalid_key(format!(
                "JWK '{kid}' is an encryption key"
            )));
        }
        let declared = match jwk.common.key_algorithm {
            Some(alg) => Some(Algorithm::try_from(alg).map_err(|_| {
                AuthError::invalid_key(format!("JWK '{kid}' has unsupported alg {alg}"))
            })?),
            None => None,
        };
        let alg = match (&jwk.algorithm, declared) {
            (AlgorithmParameters::OctetKey(_), _) => {
                return Err(AuthError::invalid_key(format!(
                    "JWK '{kid}' is a symmetric key; secrets are never accepted from a key set"
                )));
            }
            (AlgorithmParameters::OctetKeyPair(p), alg) => {
                // Checked here because the verifier slices the first 32 bytes of `x`.
                let x_len = URL_SAFE_NO_PAD.decode(&p.x).map(|x| x.len()).unwrap_or(0);
                if p.curve != EllipticCurve::Ed25519 || x_len != 32 {
                    return Err(AuthError::invalid_key(format!(
                        "JWK '{kid}' is not an Ed25519 key"
                    )));
                }
                alg.unwrap_or(Algorithm::EdDSA)
            }
            (AlgorithmParameters::EllipticCurve(p), alg) => {
                let implied = match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => {
                        return Err(AuthError::invalid_key(format!(
                            "JWK '{kid}' uses an unsupported curve"
                        )));
                    }
                };
                if alg.is_some_and(|a| a != implied) {
                    return Err(AuthError::invalid_key(format!(
                        "JWK '{kid}': alg does not match its curve"
                    )));
                }
                implied
            }
            (AlgorithmParameters::RSA(p), alg) => {
                // RS256 when the JWK names none: see the doc comment.
                let alg = alg.unwrap_or(Algorithm::RS256);
                if !RSA_ALGORITHMS.contains(&alg) {
                    return Err(AuthError::invalid_key(format!(
                        "RSA JWK '{kid}': alg {alg:?} is not RS256 or PS256"
                    )));
                }
                check_rsa_size(kid, &p.n)?;
                check_rsa_exponent(kid, &p.e)?;
                alg
            }
            _ => {
                return Err(AuthError::invalid_key(format!(
                    "JWK '{kid}' has an unsupported key type"
                )));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: format!("JWK '{kid}' is not a valid key"),
                },
                e,
            )
        })?;
        if key.family() != alg.family() || alg.family() == AlgorithmFamily::Hmac {
            return Err(AuthError::invalid_key(format!(
                "JWK '{kid}': alg does not match its key type"
            )));
        }
        // Load the key into the crypto provider once now: a JWK that parses but that the
        // provider refuses (an EC point off its curve) would otherwise fail every token naming
        // it with a server error, rather than being skipped here with a log line.
        if let Err(e) = jsonwebtoken::crypto::verify("", b"", &key, alg) {
            return Err(AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: format!("JWK '{kid}' is not a usable {alg:?} key"),
                },
                e,
            ));
        }
        Ok(Self {
            kid: kid.into(),
            alg,
            key,
        })
    }

    /// Loads an Ed25519, P-256 or RSA public key from PEM under the given key id: SPKI
    /// (`-----BEGIN PUBLIC KEY-----`) or, for RSA, PKCS#1 (`-----BEGIN RSA PUBLIC KEY-----`).
    /// The algorithm follows from the key type: EdDSA, ES256, and **RS256** for RSA (for PS256
    /// use [`from_public_pem_with_algorithm`](Self::from_public_pem_with_algorithm)).
    pub fn from_public_pem(
        kid: impl Into<String>,
        pem: impl AsRef<[u8]>,
    ) -> Result<Self, AuthError> {
        Self::from_public_pem_inner(kid.into(), pem.as_ref(), None)
    }

    /// Loads a public key from PEM (see [`from_public_pem`](Self::from_public_pem)) pinned to
    /// `alg`, which must fit the key type: `RS256` or `PS256` for an RSA key, `EdDSA` for
    /// Ed25519, `ES256` for P-256.
    pub fn from_public_pem_with_algorithm(
        kid: impl Into<String>,
        pem: impl AsRef<[u8]>,
        alg: Algorithm,
    ) -> Result<Self, AuthError> {
        Self::from_public_pem_inner(kid.into(), pem.as_ref(), Some(alg))
    }

    fn from_public_pem_inner(
        kid: String,
        pem: &[u8],
        pinned: Option<Algorithm>,
    ) -> Result<Self, AuthError> {
        check_kid(&kid)?;
        let (alg, key) = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else if is_pem_labelled(pem, &["PUBLIC KEY", "RSA PUBLIC KEY"]) {
            // (jsonwebtoken would also read a private key's PEM as RSA "public" bytes.)
            let key = DecodingKey::from_rsa_pem(pem).map_err(|e| {
                AuthError::with_source(
                    AuthErrorKind::InvalidKey {
                        reason: "not an Ed25519, P-256 or RSA public key".into(),
                    },
                    e,
                )
            })?;
            (Algorithm::RS256, key)
        } else {
            return Err(AuthError::invalid_key(
                "not an Ed25519, P-256 or RSA public key (SPKI or PKCS#1 PEM)",
            ));
        };
        let alg = match pinned {
            None => alg,
            Some(pinned) if pinned == alg => alg,
            Some(pinned) if RSA_ALGORITHMS.contains(&pinned) && RSA_ALGORITHMS.contains(&alg) => {
                pinned
            }
            Some(pinned) => {
                return Err(AuthError::invalid_key(format!(
                    "a {alg:?} key cannot verify {pinned:?}"
                )));
            }
        };
        // Validate the bytes now rather than at the first request: derive the JWK back.
        let mut jwk = Jwk::from_decoding_key(&key, Some(alg)).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: "unusable public key".into(),
                },
                e,
            )
        })?;
        jwk.common.key_id = Some(kid);
        Self::from_jwk(&jwk)
    }

    /// Loads a public key from a PEM file (see [`from_public_pem`](Self::from_public_pem)).
    pub fn from_public_pem_file(
        kid: impl Into<String>,
        path: impl AsRef<Path>,
    ) -> Result<Self, AuthError> {
        Self::from_public_pem(kid, read_key_file(path.as_ref())?)
    }

    /// Loads a public key from the environment variable `var`, which holds SPKI PEM text (see
    /// [`from_public_pem`](Self::from_public_pem)).
    pub fn from_public_pem_env(kid: impl Into<String>, var: &str) -> Result<Self, AuthError> {
        let pem = std::env::var(var).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: format!("environment variable {var} is not set"),
                },
                e,
            )
        })?;
        Self::from_public_pem(kid, pem)
    }

    /// An HS256 shared secret (at least [`MIN_HS256_SECRET_LEN`] bytes). Only accepted when
    /// configured explicitly like this; never from a JWKS document.
    pub fn hs256_shared_secret(kid: impl Into<String>, secret: &[u8]) -> Result<Self, AuthError> {
        let kid = kid.into();
        check_kid(&kid)?;
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(AuthError::invalid_key(format!(
                "HS256 secret must be at least {MIN_HS256_SECRET_LEN} bytes"
            )));
        }
        Ok(Self {
            kid: kid.into(),
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

chassis_core::__debug_fields!(VerificationKey { kid, alg });

/// Verification keys by key id.
///
/// [`from_jwks`](Self::from_jwks) is also how [`JwksKeySource`](super::JwksKeySource) reads the
/// documents it fetches, so RSA keys published by an identity provider (`kty: RSA`) load the
/// same way from a file, a URL or a literal document.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<Arc<str>, VerificationKey>,
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a key under its kid.
    pub fn insert(&mut self, key: VerificationKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// Adds a key, builder style.
    pub fn with(mut self, key: VerificationKey) -> Self {
        self.insert(key);
        self
    }

    /// Builds a key set from a JWKS document. Keys this verifier cannot use (encryption keys,
    /// symmetric keys, unsupported types, no kid) are skipped with a log line; the result may be
    /// empty.
    pub fn from_jwks(jwks: &JwkSet) -> Self {
        let mut set = Self::new();
        for jwk in &jwks.keys {
            match VerificationKey::from_jwk(jwk) {
                Ok(key) => set.insert(key),
                Err(err) => tracing::warn!(
                    kid = jwk.common.key_id.as_deref().unwrap_or("-"),
                    reason = %err,
                    "skipping unusable key in key set"
                ),
            }
        }
        set
    }

    /// Parses a JWKS JSON document (see [`from_jwks`](Self::from_jwks)).
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, AuthError> {
        let jwks: JwkSet = serde_json::from_slice(json).map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: "not a JWKS document".into(),
                },
                e,
            )
        })?;
        Ok(Self::from_jwks(&jwks))
    }

    /// The key with this kid.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| &**k)
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.keys.values()).finish()
    }
}

impl FromIterator<VerificationKey> for KeySet {
    fn from_iter<T: IntoIterator<Item = VerificationKey>>(iter: T) -> Self {
        let mut set = Self::new();
        for key in iter {
            set.insert(key);
        }
        set
    }
}

fn check_kid(kid: &str) -> Result<(), AuthError> {
    if kid.is_empty() || kid.len() > 128 || kid.chars().any(|c| c.is_control()) {
        return Err(AuthError::invalid_key(
            "a key id must be 1 to 128 printable characters",
        ));
    }
    Ok(())
}

/// Refuses an RSA modulus (`n`, base64url) outside
/// [`MIN_RSA_MODULUS_BITS`]..=[`MAX_RSA_MODULUS_BITS`].
fn check_rsa_size(kid: &str, n: &str) -> Result<(), AuthError> {
    let n = URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .map_err(|e| {
            AuthError::with_source(
                AuthErrorKind::InvalidKey {
                    reason: format!("RSA key '{kid}': modulus is not base64url"),
                },
                e,
            )
        })?;
    let bits = unsigned_bits(&n);
    if !(MIN_RSA_MODULUS_BITS..=MAX_RSA_MODULUS_BITS).contains(&bits) {
        return Err(AuthError::new(AuthErrorKind::RsaKeySize {
            kid: kid.to_owned(),
            bits,
        }));
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(AuthError::invalid_key(format!(
            "RSA key '{kid}': an even modulus is not an RSA modulus"
        )));
    }
    Ok(())
}

/// Refuses a public exponent the RSA implementation would refuse at every verification (so the
/// key is skipped when loaded, not a server error per request): odd, at least 3, below 2^33.
fn check_rsa_exponent(kid: &str, e: &str) -> Result<(), AuthError> {
    let e = URL_SAFE_NO_PAD
        .decode(e.trim_end_matches('='))
        .unwrap_or_default();
    let bits = unsigned_bits(&e);
    let value = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if bits == 0 || bits > 33 || value < 3 || value % 2 == 0 {
        return Err(AuthError::invalid_key(format!(
            "RSA key '{kid}': unusable public exponent"
        )));
    }
    Ok(())
}

/// The length in bits of a big-endian unsigned integer (leading zero bytes ignored).
fn unsigned_bits(be: &[u8]) -> usize {
    let digits = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    digits.len() * 8 - digits[0].leading_zeros() as usize
}

/// Whether `pem` is one PEM block with one of `labels`.
fn is_pem_labelled(pem: &[u8], labels: &[&str]) -> bool {
    let text = String::from_utf8_lossy(pem);
    let text = text.trim_start();
    labels
        .iter()
        .any(|label| text.starts_with(&format!("-----BEGIN {label}-----")))
}

/// The SPKI DER of an RSA public key (RFC 8017 `RSAPublicKey` in a `SubjectPublicKeyInfo`).
fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut rsa_public_key = der_uint(n);
    rsa_public_key.extend(der_uint(e));
    let mut bits = vec![0x00]; // no unused bits
    bits.extend(der_tlv(0x30, &rsa_public_key));
    let mut spki = RSA_ALGORITHM_ID.to_vec();
    spki.extend(der_tlv(0x03, &bits));
    der_tlv(0x30, &spki)
}

/// A DER INTEGER holding the unsigned big-endian `be`.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    let mut digits = Vec::with_capacity(be.len() - start + 1);
    // A set high bit would make the integer negative: prefix a zero byte.
    if be.get(start).is_none_or(|b| b & 0x80 != 0) {
        digits.push(0);
    }
    digits.extend_from_slice(&be[start..]);
    der_tlv(0x02, &digits)
}

/// A DER tag-length-value (definite length, short or long form).
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The bytes of the key file at `path`; an unreadable file is an
/// [`InvalidKey`](AuthErrorKind::InvalidKey) error naming it.
fn read_key_file(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| {
        AuthError::with_source(
            AuthErrorKind::InvalidKey {
                reason: format!("cannot read {}", path.display()),
            },
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for key in [
            SigningKey::generate_ed25519().unwrap(),
            SigningKey::generate_es256().unwrap(),
        ] {
            let pem = key.to_pkcs8_pem().unwrap();
            let again = SigningKey::from_pem(&pem).unwrap();
            assert_eq!(again.kid(), key.kid(), "thumbprint kid is stable");
            assert_eq!(again.algorithm(), key.algorithm());
            let public =
                VerificationKey::from_public_pem("k", key.public_key_pem().unwrap()).unwrap();
            assert_eq!(public.algorithm(), key.algorithm());
            let jwk = key.public_jwk().unwrap();
            assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid()));
            let from_jwk = VerificationKey::from_jwk(jwk).unwrap();
            assert_eq!(from_jwk.algorithm(), key.algorithm());
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        let key = SigningKey::hs256_shared_secret("s1", &[7u8; 32]).unwrap();
        let shown = format!("{key:?} {:?}", key.verification_key());
        assert!(shown.contains("s1"));
        assert!(!shown.contains("7, 7"));
    }

    #[test]
    fn short_hs256_secret_and_symmetric_jwk_are_rejected() {
        assert!(SigningKey::hs256_shared_secret("s", b"short").is_err());
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "kid": "x", "k": URL_SAFE_NO_PAD.encode([1u8; 32])
        }))
        .unwrap();
        assert!(VerificationKey::from_jwk(&jwk).is_err());
        let set = KeySet::from_jwks(&JwkSet { keys: vec![jwk] });
        assert!(set.is_empty());
    }

    #[tokio::test]
    async fn public_jwks_verify_their_own_tokens() {
        for key in [
            SigningKey::generate_ed25519().unwrap(),
            SigningKey::generate_es256().unwrap(),
        ] {
            let jwk = key.public_jwk().unwrap().clone();
            let issuer = crate::auth::TokenIssuer::builder("orders")
                .signing_key(key)
                .build()
                .unwrap();
            let token = issuer.issue("billing", &[]).unwrap();
            let keys = KeySet::new().with(VerificationKey::from_jwk(&jwk).unwrap());
            let verifier = crate::auth::TokenVerifier::builder("billing")
                .trust_issuer("orders")
                .keys(keys)
                .build()
                .unwrap();
            let checked = verifier.verify(token.as_str()).await;
            assert!(
                checked.is_ok(),
                "{:?}: {checked:?}",
                jwk.common.key_algorithm
            );
        }
    }

    #[test]
    fn jwks_keys_the_provider_cannot_load_are_skipped() {
        // Found by the service_token fuzz target: this P-256 JWK parses, but the crypto provider
        // refuses its point, so every token naming it failed verification with a server error
        // (500, an error log line per request) instead of being refused as a bad token.
        let bad = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"es","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRKEU","y":"x_FEzRjGw2wqgx0tvHJCcqJf8hlq-Rg8Ud-HxpapDOI"}]}"#;
        assert!(KeySet::from_jwks_json(bad).unwrap().is_empty());
        let good = SigningKey::generate_es256().unwrap();
        let jwks = serde_json::json!({ "keys": [good.public_jwk().unwrap()] });
        let set = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn jwk_alg_must_match_key_type() {
        let key = SigningKey::generate_ed25519().unwrap();
        let mut jwk = key.public_jwk().unwrap().clone();
        jwk.common.key_algorithm = Some(KeyAlgorithm::HS256);
        assert!(VerificationKey::from_jwk(&jwk).is_err());
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        assert!(VerificationKey::from_jwk(&jwk).is_err());
    }

    #[test]
    fn loads_from_environment_variables() {
        let key = SigningKey::generate_es256().unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let vars = |name: &str| match name {
            "SVC_KEY" => Some(pem.clone()),
            "SVC_KEY_KID" => Some("2026-11".to_owned()),
            _ => None,
        };
        let loaded = SigningKey::from_vars("SVC_KEY", vars).unwrap();
        assert_eq!(loaded.kid(), "2026-11");
        assert_eq!(loaded.algorithm(), Algorithm::ES256);
        let no_kid =
            SigningKey::from_vars("SVC_KEY", |n| (n == "SVC_KEY").then(|| pem.clone())).unwrap();
        assert_eq!(no_kid.kid(), key.kid());
        assert!(SigningKey::from_env("CHASSIS_SURELY_UNSET_VARIABLE").is_err());
        // An RSA key with `{var}_ALG`: PS256 instead of the RS256 default; nonsense refused.
        let rsa = fixture("test-only-rsa2048.pem");
        let with_alg = |alg: &'static str| {
            let rsa = rsa.clone();
            SigningKey::from_vars("SVC_KEY", move |n| match n {
                "SVC_KEY" => Some(rsa.clone()),
                "SVC_KEY_ALG" => Some(alg.to_owned()),
                _ => None,
            })
        };
        assert_eq!(with_alg("PS256").unwrap().algorithm(), Algorithm::PS256);
        assert_eq!(with_alg("").unwrap().algorithm(), Algorithm::RS256);
        assert!(with_alg("ES256").is_err());
        assert!(with_alg("none").is_err());
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    #[test]
    fn rsa_thumbprint_follows_rfc_7638() {
        // The example of RFC 7638 §3.1.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(
            VerificationKey::from_jwk(&jwk).unwrap().algorithm(),
            Algorithm::RS256
        );
        // A signing key's kid is that thumbprint of its public JWK.
        let key = SigningKey::from_pem(fixture("test-only-rsa2048.pem")).unwrap();
        let mut public = key.public_jwk().unwrap().clone();
        public.common = Default::default();
        assert_eq!(
            key.kid(),
            public.thumbprint(ThumbprintHash::SHA256).unwrap()
        );
    }

    #[test]
    fn rsa_keys_round_trip_through_the_pem_openssl_writes() {
        let pkcs8 = fixture("test-only-rsa2048.pem");
        let key = SigningKey::from_pem(&pkcs8).unwrap();
        assert_eq!(key.algorithm(), Algorithm::RS256);
        // Our DER for PKCS#8 and SPKI is byte for byte what OpenSSL wrote.
        assert_eq!(key.to_pkcs8_pem().unwrap(), pkcs8);
        assert_eq!(
            key.public_key_pem().unwrap(),
            fixture("test-only-rsa2048.pub.pem")
        );
        // PKCS#1 loads as the same key.
        let pkcs1 = SigningKey::from_pem(fixture("test-only-rsa2048.pkcs1.pem")).unwrap();
        assert_eq!(pkcs1.kid(), key.kid());
        for public in [
            "test-only-rsa2048.pub.pem",
            "test-only-rsa2048.pkcs1.pub.pem",
        ] {
            let v = VerificationKey::from_public_pem("k", fixture(public)).unwrap();
            assert_eq!(v.algorithm(), Algorithm::RS256, "{public}");
        }
        // PS256 only when asked, on both sides; never for a key of another type.
        let ps = key.clone().with_algorithm(Algorithm::PS256).unwrap();
        assert_eq!(ps.kid(), key.kid());
        assert_eq!(ps.verification_key().algorithm(), Algorithm::PS256);
        assert_eq!(
            ps.public_jwk().unwrap().common.key_algorithm,
            Some(KeyAlgorithm::PS256)
        );
        assert!(key.clone().with_algorithm(Algorithm::ES256).is_err());
        assert!(key.clone().with_algorithm(Algorithm::HS256).is_err());
        assert!(key.clone().with_algorithm(Algorithm::RS512).is_err());
        let es = SigningKey::generate_es256().unwrap();
        assert!(es.with_algorithm(Algorithm::PS256).is_err());
        let v = VerificationKey::from_public_pem_with_algorithm(
            "k",
            fixture("test-only-rsa2048.pub.pem"),
            Algorithm::PS256,
        )
        .unwrap();
        assert_eq!(v.algorithm(), Algorithm::PS256);
        assert!(
            VerificationKey::from_public_pem_with_algorithm(
                "k",
                fixture("test-only-rsa2048.pub.pem"),
                Algorithm::HS256,
            )
            .is_err()
        );
        // A private key is not a public key.
        assert!(VerificationKey::from_public_pem("k", &pkcs8).is_err());
    }

    #[test]
    fn small_rsa_keys_are_refused_with_a_typed_error() {
        let small = SigningKey::from_pem(fixture("test-only-rsa1024.pem")).unwrap_err();
        assert!(
            matches!(small.kind(), AuthErrorKind::RsaKeySize { bits: 1024, .. }),
            "{small:?}"
        );
        let small = VerificationKey::from_public_pem("k", fixture("test-only-rsa1024.pub.pem"))
            .unwrap_err();
        assert!(
            matches!(small.kind(), AuthErrorKind::RsaKeySize { bits: 1024, .. }),
            "{small:?}"
        );
        assert!(small.to_string().contains("1024-bit"), "{small}");
    }

    #[test]
    fn rsa_jwks_pin_their_alg_and_default_to_rs256() {
        let key = SigningKey::from_pem(fixture("test-only-rsa2048.pem")).unwrap();
        let mut jwk = key.public_jwk().unwrap().clone();
        jwk.common.key_algorithm = None;
        assert_eq!(
            VerificationKey::from_jwk(&jwk).unwrap().algorithm(),
            Algorithm::RS256
        );
        jwk.common.key_algorithm = Some(KeyAlgorithm::PS256);
        assert_eq!(
            VerificationKey::from_jwk(&jwk).unwrap().algorithm(),
            Algorithm::PS256
        );
        for alg in [
            KeyAlgorithm::ES256,
            KeyAlgorithm::HS256,
            KeyAlgorithm::RS512,
            KeyAlgorithm::EdDSA,
        ] {
            jwk.common.key_algorithm = Some(alg);
            assert!(VerificationKey::from_jwk(&jwk).is_err(), "{alg:?}");
        }
        // An exponent the RSA implementation would refuse at every verification.
        jwk.common.key_algorithm = None;
        if let AlgorithmParameters::RSA(p) = &mut jwk.algorithm {
            p.e = URL_SAFE_NO_PAD.encode([1u8]);
        }
        assert!(VerificationKey::from_jwk(&jwk).is_err());
    }

    #[test]
    fn der_lengths_in_long_form() {
        assert_eq!(der_tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(der_tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der_tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_uint(&[0x00, 0x01]), [0x02, 0x01, 0x01]);
        assert_eq!(unsigned_bits(&[0x00, 0x01, 0xff]), 9);
    }

    #[test]
    fn with_kid_renames() {
        let key = SigningKey::generate_ed25519()
            .unwrap()
            .with_kid("2026-11")
            .unwrap();
        assert_eq!(key.kid(), "2026-11");
        assert_eq!(key.verification_key().kid(), "2026-11");
        assert!(key.clone().with_kid("").is_err());
    }
}
