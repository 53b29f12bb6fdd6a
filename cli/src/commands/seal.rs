//! `cvm keygen` and `cvm seal`: the owner's side of sealed workloads. The owner key
//! signs each bundle's manifest; a fresh content key encrypts the Wasm and goes to the
//! broker (`--upload`) or to a private file (`--key-out`), never to the terminal.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cvm_runtime::bundle::owner::{OwnerAlg, OwnerKey};
use cvm_runtime::bundle::{SealRequest, parse, seal};
use cvm_runtime::policy::WorkloadPolicy;
use serde::Serialize;

use super::broker::{Admin, AdminArgs, random_key};
use super::write_new_private;

/// `cvm keygen` arguments.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Private key file to create (PKCS#8 PEM, mode 0600); the public key goes beside
    /// it with `.pub`.
    #[arg(long, default_value = "owner.key")]
    pub out: PathBuf,
    /// Signature algorithm.
    #[arg(long, default_value = "eddsa", value_parser = ["eddsa", "es256"])]
    pub alg: String,
    /// Print a JSON document (`{key, public, kid}`).
    #[arg(long)]
    pub json: bool,
}

/// `cvm seal` arguments.
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// The Wasm module or component.
    #[arg(long)]
    pub wasm: PathBuf,
    /// The workload policy (YAML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The workload's name ([a-z0-9-]) [default: the Wasm file's stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Its version.
    #[arg(long, default_value = "0.1.0")]
    pub version: String,
    /// Set a variable of the policy's env (added, or replacing the file's value): the
    /// owner's configuration for this bundle, signed with it. Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Broker resource path of the content key (repository/type/tag).
    #[arg(long)]
    pub key_resource: String,
    /// Broker resource path of the key that encrypts the workload's state (policies
    /// with preopens; one per workload) [default: REPOSITORY/NAME/state-key, with the
    /// repository of --key-resource].
    #[arg(long)]
    pub state_key_resource: Option<String>,
    /// The owner's private key (`cvm keygen`).
    #[arg(long, default_value = "owner.key")]
    pub owner_key: PathBuf,
    /// The bundle to write [default: NAME.bundle].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Store the fresh content key at --key-resource in the broker (admin options).
    #[arg(long)]
    pub upload: bool,
    /// How --upload reaches the broker.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Also (or instead) write the content key to this new file (mode 0600).
    #[arg(long)]
    pub key_out: Option<PathBuf>,
    /// Print what the owner is about to sign: the manifest and its policy.
    #[arg(long)]
    pub explain: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct KeygenReport {
    key: PathBuf,
    public: PathBuf,
    kid: String,
}

#[derive(Serialize)]
struct SealReport {
    bundle: PathBuf,
    size: usize,
    manifest_sha256: String,
    owner_kid: String,
    key_resource: String,
    key_uploaded: bool,
    state_key_resource: Option<String>,
    /// Whether --upload made a new state key (an existing one is never replaced).
    state_key_created: bool,
    key_file: Option<PathBuf>,
    manifest: cvm_runtime::bundle::Manifest,
}

/// Write `bytes` to `path` through a temporary file and a rename, so an existing file
/// is either the old or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// Run `cvm keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let alg = match args.alg.as_str() {
        "es256" => OwnerAlg::Es256,
        _ => OwnerAlg::EdDsa,
    };
    let key = OwnerKey::generate(alg);
    let public_path = args.out.with_extension("pub");
    anyhow::ensure!(
        !public_path.exists(),
        "{} exists; refusing to overwrite an owner key",
        public_path.display()
    );
    write_new_private(&args.out, key.to_pem()?.as_bytes())?;
    std::fs::write(&public_path, key.public().to_pem()?)
        .with_context(|| format!("write {}", public_path.display()))?;
    let report = KeygenReport {
        key: args.out,
        public: public_path,
        kid: hex::encode(key.public().kid()),
    };
    if args.json {
        return super::print_json(&report);
    }
    eprintln!(
        "owner key {} (public {}), kid {}",
        report.key.display(),
        report.public.display(),
        report.kid
    );
    Ok(())
}

/// Run `cvm seal`.
pub fn seal_command(args: SealArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.upload || args.key_out.is_some(),
        "the content key would be lost: pass --upload (store it in the broker) or --key-out FILE"
    );
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("read Wasm {}", args.wasm.display()))?;
    anyhow::ensure!(
        wasm.starts_with(b"\0asm"),
        "{} is not a Wasm module or component",
        args.wasm.display()
    );
    let policy_text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("read policy {}", args.policy.display()))?;
    let mut policy = WorkloadPolicy::from_yaml(&policy_text)
        .with_context(|| format!("policy {}", args.policy.display()))?;
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} is not NAME=VALUE"))?;
        policy.env.insert(k.to_owned(), v.to_owned());
    }
    // The variables given here are checked as the file's are.
    policy
        .validate()
        .with_context(|| format!("policy {} with --env", args.policy.display()))?;
    let owner_pem = std::fs::read_to_string(&args.owner_key)
        .with_context(|| format!("read owner key {} (cvm keygen)", args.owner_key.display()))?;
    let owner = OwnerKey::from_pem(&owner_pem)
        .with_context(|| format!("owner key {}", args.owner_key.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .wasm
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let state_key_resource = match (&args.state_key_resource, policy.preopens.is_empty()) {
        (Some(_), true) => anyhow::bail!(
            "--state-key-resource: the policy has no preopens, so the workload has no state"
        ),
        (Some(r), false) => Some(r.clone()),
        (None, false) => Some(default_state_resource(&args.key_resource, &name)?),
        (None, true) => None,
    };
    let key = random_key(cvm_runtime::bundle::KEY_LEN)?;
    let bundle = seal(
        &SealRequest {
            name: &name,
            version: &args.version,
            wasm: &wasm,
            policy,
            key_resource: &args.key_resource,
            state_key_resource: state_key_resource.as_deref(),
        },
        &owner,
        &key,
    )?;
    // Read it back exactly as an appliance will, before anything is stored.
    let trusted = cvm_runtime::bundle::owner::OwnerKeys::new(vec![owner.public()]);
    let verified = parse(&bundle)?.verify(&trusted)?;
    verified.open(&key)?;

    if args.explain {
        eprintln!(
            "about to sign, as owner {}:",
            hex::encode(owner.public().kid())
        );
        eprintln!("{}", serde_json::to_string_pretty(verified.manifest())?);
        let m = verified.manifest();
        let files = std::path::Path::new(cvm_runtime::confinement::STATE_WORKLOADS)
            .join(&m.name)
            .join("files");
        let c = cvm_runtime::confinement::Confinement::derive(&m.name, &m.policy, &files);
        eprint!("{}", c.explain());
    }
    if let Some(path) = &args.key_out {
        write_new_private(path, &key)?;
    }
    let mut state_key_created = false;
    if args.upload {
        let admin = Admin::connect(&args.admin)?;
        admin.put_resource(&args.key_resource, &key)?;
        if let Some(r) = &state_key_resource {
            // A new version of a workload keeps its state: only a missing key is made.
            state_key_created = admin.create_resource(r, &random_key(STATE_KEY_LEN)?)?;
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.bundle")));
    write_atomic(&out, &bundle)?;
    let report = SealReport {
        size: bundle.len(),
        manifest_sha256: hex::encode(verified.manifest_digest()),
        owner_kid: hex::encode(verified.owner_kid()),
        key_resource: args.key_resource.clone(),
        key_uploaded: args.upload,
        state_key_resource: state_key_resource.clone(),
        state_key_created,
        key_file: args.key_out.clone(),
        manifest: verified.manifest().clone(),
        bundle: out,
    };
    if args.json {
        return super::print_json(&report);
    }
    eprintln!(
        "sealed {} {} into {} ({} bytes); manifest sha256 {}; content key {}",
        report.manifest.name,
        report.manifest.version,
        report.bundle.display(),
        report.size,
        report.manifest_sha256,
        if args.upload {
            format!("stored in the broker at {}", report.key_resource)
        } else {
            "written to --key-out".to_owned()
        }
    );
    if let Some(r) = &report.state_key_resource {
        match (args.upload, state_key_created) {
            (true, true) => eprintln!("state key: a new one stored in the broker at {r}"),
            (true, false) => eprintln!("state key: the broker's existing {r} is kept"),
            (false, _) => eprintln!(
                "state key: store {STATE_KEY_LEN} random bytes at {r} before deploying \
                 (cvm broker resource put {r} --random {STATE_KEY_LEN} --keep)"
            ),
        }
    }
    Ok(())
}

/// Bytes of a workload state key (the agent stretches it for fscrypt).
pub const STATE_KEY_LEN: usize = 32;

/// `REPOSITORY/NAME/state-key`: the content key's repository, and the workload's name,
/// so two workloads never share a state key (or its version counter).
pub fn default_state_resource(key_resource: &str, name: &str) -> anyhow::Result<String> {
    let repo = match key_resource.split('/').collect::<Vec<_>>().as_slice() {
        [repo, _, _] => (*repo).to_owned(),
        _ => anyhow::bail!("--key-resource {key_resource} is not repository/type/tag"),
    };
    let derived = format!("{repo}/{name}/state-key");
    anyhow::ensure!(
        derived != key_resource,
        "--key-resource is {derived}, the default state key: pass --state-key-resource"
    );
    Ok(derived)
}
