//! The client side of attested TLS: before `cvm` sends a bundle or a signed request,
//! it attests the agent (`cvm attest`'s checks) against reference values and pins the
//! TLS key the evidence is bound to; every later connection of the command must present
//! that key. No reference values, or any failed check, and nothing is sent.

use anyhow::Context as _;

use crate::agent_client::Agent;
use crate::commands::attest::{VerifyArgs, attest_guest, ek_trust, reference};
use crate::exit::VerificationFailed;

/// Attest the agent at `addr` against `verify`'s reference values; the returned agent
/// is pinned to the attested key. `quiet`: print nothing (JSON output).
pub fn connect(addr: &str, verify: &VerifyArgs, quiet: bool) -> anyhow::Result<Agent> {
    let reference = reference(verify)?.context(
        "no reference values: pass --image DIR or --reference FILE (the agent is attested \
         against them before anything is sent)",
    )?;
    let trust = ek_trust(verify.ek_ca.as_deref())?;
    let (report, agent) = attest_guest(addr, &trust, Some(&reference))
        .with_context(|| format!("attest the agent at {addr}"))?;
    if !report.ok {
        eprintln!("cvm: the agent at {addr} failed attestation; nothing was sent:");
        for c in report.checks.iter().filter(|c| !c.ok) {
            eprintln!("  FAIL {}: {}", c.name, c.detail);
        }
        return Err(VerificationFailed.into());
    }
    if !quiet {
        eprintln!(
            "attested {addr}: {} evidence matches the reference values; TLS key sha256 {} pinned",
            report.tee,
            &report.tls_key_sha256[..16]
        );
    }
    Ok(agent)
}
