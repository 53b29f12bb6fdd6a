//! The project's own key broker: the Trustee KBS protocol 0.4.0 with real verifiers.
//!
//! Trust-chain place: the relying party. It verifies guest evidence against reference
//! values before it releases any resource.
//!
//! - [`kbs`]: the protocol endpoints (`/auth`, `/attest`, `/resource`), free of HTTP;
//!   [`verify`] checks evidence per TEE, [`appraise`] compares PCRs with references.
//! - [`admin`]: resources, the resource policy and reference values, behind
//!   [`admin_token`]s.
//! - [`server`] (HTTP/1.1, rustls via [`tls`]) and [`command`] (`serve`).
//! - State: [`state`], [`session`]s, the [`store`], [`policy`] (Rego), [`reference`]
//!   values, the [`token`] it issues, the [`audit`] log; errors in Trustee's shape
//!   ([`error`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_token;
pub mod appraise;
pub mod audit;
pub mod command;
pub mod error;
pub mod kbs;
pub mod policy;
pub mod reference;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod tls;
pub mod token;
pub mod verify;

/// Resource paths (the rule lives with the protocol client, shared by all who name one).
pub use cvm_kbs_client::resource_path;
