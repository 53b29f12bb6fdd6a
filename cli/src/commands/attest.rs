//! `cvm attest`: attest a running guest over its agent API, as a relying party would.
//!
//! 1. Bind the guest's attestation key to its TPM: check the EK certificate against
//!    the EK CA bundle (swtpm's local CA by default), seal a fresh secret to the EK for
//!    the AK's name, and require the guest to recover it (credential activation).
//! 2. Ask for evidence with a fresh 32-byte nonce, over TLS pinned to the key the first
//!    connection presented: a quote over all sha256 PCRs whose qualifying data is
//!    `tls_key_nonce(key, nonce)`, the runtime event log and the firmware event log.
//! 3. Appraise it (see `appraise`) against that bound nonce, so a passing quote proves
//!    the TLS key lives in the attested guest, and against the image's reference
//!    values when `--image` or `--reference` is given.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context as _;
use cvm_attest::tpm::ekcert::EkCaBundle;
use cvm_attest::tpm::verifier::{EkTrust, TrustedAk, challenge_ak};
use cvm_attest::tpm::{ActivationResponse, AkIdentity};
use cvm_image::measure::qemu::QemuReference;
use cvm_proto::agent::AttestationEvidence;
use serde::Serialize;

use crate::agent_client::{self, Agent};
use crate::appraise::appraise;
use crate::exit::VerificationFailed;
use crate::paths;
use crate::verify::Check;

/// Arguments of `cvm attest`.
#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// The agent, HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// The reference values the agent's evidence must match.
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// How the agent's evidence is checked: the reference values and the EK CA.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Check the PCRs against the reference values of this image folder.
    #[arg(long, conflicts_with = "reference")]
    pub image: Option<PathBuf>,
    /// Check the PCRs against a reference document (`cvm measure --platform qemu --json`).
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// With --image: how the guest booted, `direct` or `disk` (`cvm run --disk`).
    #[arg(long, default_value = "direct", value_parser = ["direct", "disk"])]
    pub boot: String,
    /// With --image: the guest's memory in MiB (PCR 4 depends on it).
    #[arg(long, default_value_t = cvm_image::measure::qemu::DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// PEM bundle of CAs trusted to sign EK certificates [default: swtpm's local CA in
    /// the cache, the CA `cvm run` provisions vTPMs with].
    #[arg(long, value_name = "PEM")]
    pub ek_ca: Option<PathBuf>,
}

/// The outcome of attesting a guest.
#[derive(Debug, Serialize)]
pub struct AttestReport {
    /// Every check passed.
    pub ok: bool,
    /// The evidence type.
    pub tee: String,
    /// Hex of the nonce the quote answers.
    pub nonce: String,
    /// Hex of the activated AK's TPM name.
    pub ak_name: String,
    /// Hex of the SHA-256 of the agent's TLS public key (SubjectPublicKeyInfo) the
    /// evidence is bound to.
    pub tls_key_sha256: String,
    /// The quoted sha256 PCRs, hex.
    pub pcrs: Vec<String>,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

/// The EK CA bundle at `path`, or swtpm's local CA (the one `cvm run` uses).
pub fn ek_trust(path: Option<&std::path::Path>) -> anyhow::Result<EkTrust> {
    let pem = match path {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("read EK CA bundle {}", p.display()))?
        }
        None => {
            let dir = paths::swtpm_ca_dir();
            let mut pem = Vec::new();
            for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
                let path = dir.join(f);
                pem.extend(std::fs::read(&path).with_context(|| {
                    format!("read swtpm local CA {} (pass --ek-ca)", path.display())
                })?);
            }
            pem
        }
    };
    Ok(EkTrust::CaBundle(EkCaBundle::from_pem(&pem)?))
}

/// The reference values `args` name, if any.
pub fn reference(args: &VerifyArgs) -> anyhow::Result<Option<QemuReference>> {
    if let Some(path) = &args.reference {
        let bytes = std::fs::read(path)
            .with_context(|| format!("read reference values {}", path.display()))?;
        return Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("reference values {} are malformed", path.display())
        })?));
    }
    let Some(image) = &args.image else {
        return Ok(None);
    };
    let measure = super::measure::MeasureArgs::for_image(image.clone(), args.memory, &args.boot);
    Ok(Some(super::measure::qemu_reference(&measure)?))
}

fn fresh_nonce() -> anyhow::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut nonce = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .context("read a nonce from /dev/urandom")?;
    Ok(nonce)
}

/// Bind the guest's AK (`identity`) to its certified EK, over `agent` (pinned). The
/// outer error is a host or transport failure; the inner one is a verification failure,
/// described.
fn bind_ak(
    agent: &Agent,
    identity: &AkIdentity,
    trust: &EkTrust,
) -> anyhow::Result<Result<TrustedAk, String>> {
    let describe = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s.push_str(&format!(": {c}"));
            cause = c.source();
        }
        s
    };
    let challenge = match challenge_ak(identity, trust, SystemTime::now()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(describe(&e))),
    };
    let answer: Result<ActivationResponse, _> =
        agent_client::post_json(agent, "/v1/attestation/activate", &challenge.request);
    let answer = match answer {
        Ok(a) => a,
        // The guest's TPM refused the credential: not our EK or not its AK.
        Err(e @ agent_client::AgentClientError::Status { .. }) => {
            return Ok(Err(format!(
                "credential activation failed: {}",
                describe(&e)
            )));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(challenge.finish(&answer).map_err(|e| describe(&e)))
}

/// Attest the guest at `addr`: note the TLS key its agent presents with the AK's
/// identity, then over connections pinned to that key bind the AK, ask for fresh evidence bound to the key,
/// and appraise it against `reference`. The error is a host or transport failure; a
/// failed check is in the returned checks. When the report is ok, the agent returned
/// is pinned to the attested key.
pub fn attest_guest(
    addr: &str,
    trust: &EkTrust,
    reference: Option<&QemuReference>,
) -> anyhow::Result<(AttestReport, Agent)> {
    // The AK's identity is public; the connection that brings it names the key to pin.
    let (identity, key): (AkIdentity, _) =
        agent_client::get_json_keyed(&Agent::unverified(addr), "/v1/attestation/identity")?;
    let agent = Agent::pinned(addr, key);
    let ak = match bind_ak(&agent, &identity, trust)? {
        Ok(ak) => ak,
        Err(detail) => {
            let report = AttestReport {
                ok: false,
                tee: "tpm".into(),
                nonce: String::new(),
                ak_name: String::new(),
                tls_key_sha256: hex::encode(key),
                pcrs: Vec::new(),
                checks: vec![Check {
                    name: "attestation key".into(),
                    ok: false,
                    detail,
                }],
            };
            return Ok((report, agent));
        }
    };
    let nonce = fresh_nonce()?;
    let evidence: AttestationEvidence = agent_client::get_json(
        &agent,
        &format!("/v1/attestation?nonce={}", hex::encode(nonce)),
    )?;
    let mut checks = vec![Check {
        name: "attestation key".into(),
        ok: true,
        detail: "EK certificate chains to the EK CA; the TPM activated a credential for this AK"
            .into(),
    }];
    checks.push(if evidence.tls_key_sha256 == hex::encode(key) {
        Check {
            name: "tls key".into(),
            ok: true,
            detail: format!(
                "the evidence is bound to the TLS key this connection presented (sha256 {})",
                hex::encode(key)
            ),
        }
    } else {
        Check {
            name: "tls key".into(),
            ok: false,
            detail: format!(
                "the evidence names TLS key {}, the connection presented {}",
                evidence.tls_key_sha256,
                hex::encode(key)
            ),
        }
    });
    // The quote must answer the nonce bound to the key, not the bare nonce.
    let bound = cvm_attest::binding::tls_key_nonce(&key, &nonce);
    checks.extend(appraise(&evidence, &bound, &ak, reference));
    let report = AttestReport {
        ok: checks.iter().all(|c| c.ok),
        tee: evidence.tee.clone(),
        nonce: hex::encode(nonce),
        ak_name: hex::encode(&ak.name),
        tls_key_sha256: hex::encode(key),
        pcrs: serde_json::from_value::<cvm_attest::tpm::TpmEvidence>(evidence.evidence)
            .map(|q| q.tpm_quote.pcrs)
            .unwrap_or_default(),
        checks,
    };
    Ok((report, agent))
}

/// Run `cvm attest`.
pub fn run(args: AttestArgs) -> anyhow::Result<()> {
    let trust = ek_trust(args.verify.ek_ca.as_deref())?;
    let reference = reference(&args.verify)?;
    let (report, _) = attest_guest(&args.to, &trust, reference.as_ref())?;
    if args.json {
        super::print_json(&report)?;
    } else {
        println!("{} evidence from {}", report.tee, args.to);
        super::eventlog::print_checks(&report.checks);
        if reference.is_none() {
            println!("  (no reference values: pass --image or --reference to check the PCRs)");
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(VerificationFailed.into())
    }
}
