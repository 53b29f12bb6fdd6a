//! `cvm initdata`: the init-data (Trustee's TOML) that tells a guest's PID1 where its
//! broker is, which CA to pin and which keys to fetch. `cvm run --initdata` hands it to
//! the guest through fw_cfg; `cvm measure --initdata` predicts the PCR 8 it yields.

use std::path::PathBuf;

use anyhow::Context as _;
use cvm_kbs_client::initdata::render;

/// What goes into the init-data.
#[derive(Debug, Clone, clap::Args)]
pub struct InitdataSpec {
    /// The broker URL as the guest sees it (under QEMU's user network the host is
    /// 10.0.2.2).
    #[arg(long = "broker", value_name = "URL")]
    pub broker_url: String,
    /// The broker's CA certificate (PEM) the guest pins [default: the `cvm broker serve`
    /// folder's tls/ca.pem].
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,
    /// Talk plain HTTP to the broker (only when the path is protected otherwise).
    #[arg(long, conflicts_with = "broker_ca")]
    pub insecure_http: bool,
    /// Resource path of the state volume key [default: cvm/state/key].
    #[arg(long)]
    pub state_key: Option<String>,
    /// No state volume (fetch only the --resource keys).
    #[arg(long, conflicts_with = "state_key")]
    pub no_state: bool,
    /// A resource to fetch and hand to the agent (repeatable).
    #[arg(long = "resource", value_name = "PATH")]
    pub resources: Vec<String>,
    /// An owner public key (`cvm keygen`'s .pub) whose sealed workloads the appliance
    /// accepts (repeatable).
    #[arg(long = "owner", value_name = "PEM")]
    pub owners: Vec<PathBuf>,
}

/// Render `spec` (deterministic: same arguments, same bytes).
pub fn render_spec(spec: &InitdataSpec) -> anyhow::Result<String> {
    let ca = match (&spec.broker_ca, spec.insecure_http) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => {
            Some(cvm_broker::tls::TlsFiles::in_dir(&cvm_broker::command::default_dir()).ca)
        }
    };
    let ca_pem = match &ca {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("read broker CA {} (pass --broker-ca)", p.display()))?,
        ),
        None => None,
    };
    let resources = spec.resources.join(",");
    let mut owners = String::new();
    for p in &spec.owners {
        let pem = std::fs::read_to_string(p)
            .with_context(|| format!("read owner key {}", p.display()))?;
        cvm_runtime::bundle::owner::OwnerPublic::from_pem(pem.trim())
            .with_context(|| format!("owner key {}", p.display()))?;
        owners.push_str(pem.trim_end());
        owners.push('\n');
    }
    let mut pairs: Vec<(&str, &str)> = vec![("cvm.broker-url", &spec.broker_url)];
    match &ca_pem {
        Some(pem) => pairs.push(("cvm.broker-ca", pem)),
        None => pairs.push(("cvm.broker-insecure-http", "true")),
    }
    if spec.no_state {
        pairs.push(("cvm.state-device", "none"));
    } else if let Some(k) = &spec.state_key {
        pairs.push(("cvm.state-key", k));
    }
    if !resources.is_empty() {
        pairs.push(("cvm.resources", &resources));
    }
    if !owners.is_empty() {
        pairs.push(("cvm.owners", &owners));
    }
    Ok(render("sha384", &pairs)?)
}

/// `cvm initdata` arguments.
#[derive(Debug, clap::Args)]
pub struct InitdataArgs {
    #[command(flatten)]
    spec: InitdataSpec,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `cvm initdata`.
pub fn run(args: InitdataArgs) -> anyhow::Result<()> {
    let body = render_spec(&args.spec)?;
    match args.out {
        Some(p) => std::fs::write(&p, &body).with_context(|| format!("write {}", p.display())),
        None => {
            print!("{body}");
            Ok(())
        }
    }
}
