//! Errors as the Trustee KBS reports them: a JSON body
//! `{"type": "https://github.com/confidential-containers/kbs/errors/<Variant>",
//! "detail": "…"}` with 404 for a bad path, 403 for a policy refusal and 401 for nearly
//! everything else, so a Trustee client reads our refusals as it reads Trustee's.
//! Our details are specific (which check failed), never secret.

use kbs_types::ErrorInformation;

/// Prefix of every error `type`.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors";

/// A refused request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KbsError {
    /// Admin authentication failed.
    #[error("admin access denied: {0}")]
    AdminAuthAccess(String),
    /// `/auth` or `/attest` refused: version, TEE, session, nonce, evidence, init-data.
    #[error("Attestation error: {0}")]
    AttestationError(String),
    /// A request path that names no endpoint or no valid resource.
    #[error("Request path {0} is invalid")]
    InvalidRequestPath(String),
    /// The resource could not be encrypted to the TEE key.
    #[error("JWE failed: {0}")]
    JweError(String),
    /// A plugin (here: `resource`) failed, including a resource that does not exist.
    #[error("Plugin internal error: {0}")]
    PluginInternalError(String),
    /// The resource policy denied the release.
    #[error("Access denied by policy")]
    PolicyDeny,
    /// A policy that does not load.
    #[error("Failed to parse policy: {0}")]
    ParsePolicyError(String),
    /// A body that is not the message's JSON.
    #[error("Serialize/Deserialize failed: {0}")]
    SerdeError(String),
    /// No session cookie and no bearer token.
    #[error("Attestation Token not found")]
    TokenNotFound,
    /// The token (cookie session or bearer) does not verify or has expired.
    #[error("Token Verifier error: {0}")]
    TokenVerifierError(String),
    /// A body over the endpoint's limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A method the endpoint does not serve.
    #[error("method {0} is not allowed on this endpoint")]
    MethodNotAllowed(String),
    /// The broker's own store failed.
    #[error("broker storage failed: {0}")]
    Storage(String),
    /// A counter update whose `expect` is not the counter's value (cvm's extension).
    #[error("counter {path} is at {current}, not {expected}")]
    CounterConflict {
        /// The counter.
        path: String,
        /// Its value.
        current: u64,
        /// What the writer expected.
        expected: u64,
    },
    /// A create-only write (`if-none-match: *`) to a resource that exists.
    #[error("resource {0} exists (kept as it is)")]
    ResourceExists(String),
    /// A counter update that does not move forward or has a bad holder.
    #[error("counter update refused: {0}")]
    BadCounterUpdate(String),
}

impl KbsError {
    /// The variant name in the error `type`.
    pub fn variant(&self) -> &'static str {
        match self {
            KbsError::AdminAuthAccess(_) => "AdminAuthAccess",
            KbsError::AttestationError(_) => "AttestationError",
            KbsError::InvalidRequestPath(_) => "InvalidRequestPath",
            KbsError::JweError(_) => "JweError",
            KbsError::PluginInternalError(_) => "PluginInternalError",
            KbsError::PolicyDeny => "PolicyDeny",
            KbsError::ParsePolicyError(_) => "ParsePolicyError",
            KbsError::SerdeError(_) => "SerdeError",
            KbsError::TokenNotFound => "TokenNotFound",
            KbsError::TokenVerifierError(_) => "TokenVerifierError",
            KbsError::PayloadTooLarge(_) => "PayloadTooLarge",
            KbsError::MethodNotAllowed(_) => "MethodNotAllowed",
            KbsError::Storage(_) => "StorageError",
            KbsError::CounterConflict { .. } => "CounterConflict",
            KbsError::BadCounterUpdate(_) => "BadCounterUpdate",
            KbsError::ResourceExists(_) => "ResourceExists",
        }
    }

    /// The HTTP status (Trustee's mapping; ours for the variants it lacks).
    pub fn status(&self) -> u16 {
        match self {
            KbsError::InvalidRequestPath(_) => 404,
            KbsError::PolicyDeny => 403,
            KbsError::PayloadTooLarge(_) => 413,
            KbsError::MethodNotAllowed(_) => 405,
            KbsError::Storage(_) => 500,
            KbsError::CounterConflict { .. } => 409,
            KbsError::BadCounterUpdate(_) => 400,
            KbsError::ResourceExists(_) => 412,
            _ => 401,
        }
    }

    /// The response body.
    pub fn info(&self) -> ErrorInformation {
        ErrorInformation {
            error_type: format!("{ERROR_TYPE_PREFIX}/{}", self.variant()),
            detail: self.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for KbsError {
    fn from(e: crate::store::StoreError) -> Self {
        KbsError::Storage(e.to_string())
    }
}
