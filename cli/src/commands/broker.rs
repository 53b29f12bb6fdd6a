//! `cvm broker`: run the key broker and administer it: resources, reference values and
//! the resource policy, over its admin API with an Ed25519-signed token.

use cvm_kbs_client::counter::Counter;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cvm_broker::admin_token::AdminSigner;
use cvm_broker::command::{ServeArgs, default_dir};
use cvm_kbs_client::http::{BrokerTls, HttpResponse, Transport};
use serde_json::{Value, json};

use crate::paths;

/// `cvm broker` arguments.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    #[command(subcommand)]
    command: BrokerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BrokerCommand {
    /// Serve the KBS protocol and the admin API (until Ctrl-C).
    Serve(ServeArgs),
    /// Store, read back or remove a resource (a key or small secret).
    Resource {
        #[command(subcommand)]
        command: ResourceCommand,
    },
    /// Register reference values (`cvm measure --json` output), list or remove them.
    Reference {
        #[command(subcommand)]
        command: ReferenceCommand,
    },
    /// Set or show the resource policy (Rego, `package policy`, rule `allow`).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show a counter (a workload's state version, at its state key's path), or
    /// retire it when the state it counts is lost.
    Counter {
        #[command(subcommand)]
        command: CounterCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum CounterCommand {
    /// Print the counter at REPOSITORY/TYPE/TAG as JSON (value 0 if never written).
    Get {
        /// REPOSITORY/TYPE/TAG.
        path: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Declare the state this counter counts lost (its disk is gone): the counter
    /// moves one past VALUE to `removed/NAME`, so the workload's next deploy starts
    /// with empty state, and any copy of the old state is wiped, never served.
    /// Prints the new counter as JSON.
    Retire {
        /// REPOSITORY/TYPE/TAG.
        path: String,
        /// The counter's value as `counter get` showed it (refused if it moved since).
        #[arg(long, value_name = "VALUE")]
        expect: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the admin commands reach the broker.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The broker.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    pub url: String,
    /// The broker's folder, for the defaults below [default: $CVM_CACHE/broker].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The CA to pin [default: DIR/tls/ca.pem].
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The admin private key (Ed25519 PEM) [default: DIR/admin.key].
    #[arg(long)]
    pub admin_key: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ResourceCommand {
    /// Store a resource at REPOSITORY/TYPE/TAG.
    Put {
        /// REPOSITORY/TYPE/TAG.
        path: String,
        /// Its bytes, from a file.
        #[arg(long, conflicts_with = "random", required_unless_present = "random")]
        file: Option<PathBuf>,
        /// Or N fresh random bytes (a new key; never printed).
        #[arg(long, value_name = "N")]
        random: Option<usize>,
        /// Keep an existing resource (a key that already encrypts data) instead of
        /// replacing it.
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read a resource back (to --out, else stdout).
    Get {
        /// REPOSITORY/TYPE/TAG.
        path: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a resource.
    Rm {
        /// REPOSITORY/TYPE/TAG.
        path: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ReferenceCommand {
    /// Register the reference values in FILE, or those an image recorded for one target,
    /// under NAME (replacing a previous NAME).
    Import {
        /// `cvm measure --json` output.
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        file: Option<PathBuf>,
        /// Or the image folder whose measurements.json (checked against its manifest)
        /// holds the values.
        #[arg(long, value_name = "DIR", requires = "target")]
        image: Option<PathBuf>,
        /// With --image: qemu, qemu-disk, snp or tdx.
        #[arg(long, value_parser = super::measure::RECORDED_TARGETS)]
        target: Option<String>,
        /// With --image --target snp: the VM's vCPUs.
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        /// With --image --target snp: the VM's vCPU model.
        #[arg(long, default_value = "EPYC-v4")]
        vcpu_type: cvm_image::measure::snp::CpuType,
        /// With --image: the image identity (`cvm build` prints it: the sha256 of its
        /// manifest.json) the security team approved; another image is refused.
        #[arg(long, value_name = "SHA256", requires = "image")]
        identity: Option<String>,
        /// Its name (one per accepted build).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the registered reference values (JSON).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove the reference values NAME.
    Rm {
        /// The name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Replace the resource policy with the Rego in FILE.
    Set {
        /// The Rego file.
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the resource policy.
    Get {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// An admin connection.
pub struct Admin {
    transport: Transport,
    signer: AdminSigner,
}

impl Admin {
    /// Connect as `args` say.
    pub fn connect(args: &AdminArgs) -> anyhow::Result<Self> {
        let dir = args.dir.clone().unwrap_or_else(default_dir);
        let key_path = args
            .admin_key
            .clone()
            .unwrap_or_else(|| dir.join("admin.key"));
        let pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("read admin key {} (pass --admin-key)", key_path.display()))?;
        let signer = AdminSigner::from_pem(&pem)
            .with_context(|| format!("admin key {}", key_path.display()))?;
        let tls = if args.url.starts_with("http://") {
            BrokerTls::InsecureHttp
        } else {
            let ca = args
                .ca
                .clone()
                .unwrap_or_else(|| cvm_broker::tls::TlsFiles::in_dir(&dir).ca);
            BrokerTls::Pinned(
                std::fs::read(&ca)
                    .with_context(|| format!("read broker CA {} (pass --ca)", ca.display()))?,
            )
        };
        let transport = Transport::new(&args.url, &tls, Duration::from_secs(30))?;
        Ok(Self { transport, signer })
    }

    /// One admin call; a refusal becomes an error with the broker's detail.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<HttpResponse> {
        self.call_with(method, path, body, &[])
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        let token = self.signer.token(cvm_broker::state::now(), 300);
        let resp = self.transport.call_with(
            method,
            path,
            None,
            Some(&token),
            Some(("application/octet-stream", body)),
            headers,
        )?;
        if resp.status >= 400 {
            let detail = serde_json::from_slice::<Value>(&resp.body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned());
            anyhow::bail!("broker refused ({}): {detail}", resp.status);
        }
        Ok(resp)
    }

    /// Store a resource.
    pub fn put_resource(&self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.call("POST", &format!("/kbs/v0/resource/{path}"), bytes)
            .map(|_| ())
    }

    /// Store a resource unless one exists at `path`; whether it was stored.
    pub fn create_resource(&self, path: &str, bytes: &[u8]) -> anyhow::Result<bool> {
        match self.call_with(
            "POST",
            &format!("/kbs/v0/resource/{path}"),
            bytes,
            &[("if-none-match", "*")],
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().starts_with("broker refused (412)") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A counter (`cvm broker counter get`).
    pub fn counter(&self, path: &str) -> anyhow::Result<Counter> {
        let resp = self.call("GET", &format!("/kbs/v0/admin/counter/{path}"), b"")?;
        serde_json::from_slice(&resp.body).context("the broker's counter is not JSON")
    }

    /// Retire a counter (`cvm broker counter retire`).
    pub fn retire_counter(&self, path: &str, expect: u64) -> anyhow::Result<Counter> {
        let body = json!({ "expect": expect }).to_string();
        let resp = self.call(
            "POST",
            &format!("/kbs/v0/admin/counter/{path}"),
            body.as_bytes(),
        )?;
        serde_json::from_slice(&resp.body).context("the broker's counter is not JSON")
    }

    /// Register reference values.
    pub fn import_reference(&self, name: &str, values: &Value) -> anyhow::Result<()> {
        let body = json!({"name": name, "values": values}).to_string();
        self.call("POST", "/kbs/v0/reference-values", body.as_bytes())
            .map(|_| ())
    }

    /// Replace the resource policy.
    pub fn set_policy(&self, rego: &str) -> anyhow::Result<()> {
        let body = json!({"policy": URL_SAFE_NO_PAD.encode(rego)}).to_string();
        self.call("POST", "/kbs/v0/resource-policy", body.as_bytes())
            .map(|_| ())
    }
}

/// A fresh random key of `n` bytes.
pub fn random_key(n: usize) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    anyhow::ensure!((16..=1024).contains(&n), "--random takes 16 to 1024 bytes");
    let mut key = zeroize::Zeroizing::new(vec![0u8; n]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    Ok(key)
}

/// The EK CAs `cvm broker serve` trusts by default: the swtpm local CA `cvm run` uses
/// (made now, by provisioning a throwaway vTPM, if no VM has made it yet).
pub fn default_ek_ca() -> anyhow::Result<Vec<PathBuf>> {
    let dir = paths::swtpm_ca_dir();
    let files: Vec<PathBuf> = ["issuercert.pem", "swtpm-localca-rootca-cert.pem"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if !files.iter().all(|f| f.exists()) {
        let state = tempfile::tempdir().context("create a folder for a throwaway vTPM")?;
        drop(cvm_qemu::swtpm::Swtpm::start(state.path(), &dir)?);
    }
    Ok(files)
}

fn read_file(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))
}

/// Run `cvm broker`.
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    match args.command {
        BrokerCommand::Serve(mut serve) => {
            if serve.ek_ca.is_empty() {
                serve.ek_ca = default_ek_ca()?;
            }
            cvm_broker::command::run_serve(serve)
        }
        BrokerCommand::Resource { command } => match command {
            ResourceCommand::Put {
                path,
                file,
                random,
                keep,
                admin,
            } => {
                let bytes = match (file, random) {
                    (Some(f), _) => zeroize::Zeroizing::new(read_file("resource", &f)?),
                    (None, Some(n)) => random_key(n)?,
                    (None, None) => anyhow::bail!("give --file or --random"),
                };
                let admin = Admin::connect(&admin)?;
                if keep && !admin.create_resource(&path, &bytes)? {
                    eprintln!("{path} exists; kept");
                    return Ok(());
                }
                if !keep {
                    admin.put_resource(&path, &bytes)?;
                }
                eprintln!("stored {path} ({} bytes)", bytes.len());
                Ok(())
            }
            ResourceCommand::Get { path, out, admin } => {
                let resp = Admin::connect(&admin)?.call(
                    "GET",
                    &format!("/kbs/v0/admin/resource/{path}"),
                    b"",
                )?;
                let body = zeroize::Zeroizing::new(resp.body);
                match out {
                    Some(f) => super::write_new_private(&f, &body)?,
                    None => std::io::stdout().write_all(&body)?,
                }
                Ok(())
            }
            ResourceCommand::Rm { path, admin } => {
                Admin::connect(&admin)?.call("DELETE", &format!("/kbs/v0/resource/{path}"), b"")?;
                eprintln!("removed {path}");
                Ok(())
            }
        },
        BrokerCommand::Reference { command } => match command {
            ReferenceCommand::Import {
                file,
                image,
                target,
                vcpus,
                vcpu_type,
                identity: expected,
                name,
                admin,
            } => {
                let values: Value = match (file, image, target) {
                    (Some(file), _, _) => {
                        serde_json::from_slice(&read_file("reference values", &file)?)
                            .with_context(|| format!("{} is not JSON", file.display()))?
                    }
                    (None, Some(image), Some(target)) => {
                        let (identity, values) =
                            super::measure::recorded_reference(&image, &target, vcpus, vcpu_type)?;
                        if let Some(expected) = expected {
                            let expected = expected.trim_start_matches("sha256:").to_lowercase();
                            anyhow::ensure!(
                                identity == expected,
                                "image {} has identity {identity}, not the approved {expected}: nothing registered",
                                image.display()
                            );
                        }
                        eprintln!("{target} reference values of image {identity}");
                        values
                    }
                    _ => anyhow::bail!("give a FILE, or --image DIR with --target"),
                };
                Admin::connect(&admin)?.import_reference(&name, &values)?;
                eprintln!("reference values {name} registered");
                Ok(())
            }
            ReferenceCommand::List { admin } => {
                let resp = Admin::connect(&admin)?.call("GET", "/kbs/v0/reference-values", b"")?;
                let v: Value = serde_json::from_slice(&resp.body)?;
                super::print_json(&v)
            }
            ReferenceCommand::Rm { name, admin } => {
                Admin::connect(&admin)?.call(
                    "DELETE",
                    &format!("/kbs/v0/reference-values/{name}"),
                    b"",
                )?;
                eprintln!("reference values {name} removed");
                Ok(())
            }
        },
        BrokerCommand::Counter { command } => match command {
            CounterCommand::Get { path, admin } => {
                super::print_json(&Admin::connect(&admin)?.counter(&path)?)
            }
            CounterCommand::Retire {
                path,
                expect,
                admin,
            } => super::print_json(&Admin::connect(&admin)?.retire_counter(&path, expect)?),
        },
        BrokerCommand::Policy { command } => match command {
            PolicyCommand::Set { file, admin } => {
                let rego = String::from_utf8(read_file("policy", &file)?)
                    .with_context(|| format!("{} is not UTF-8", file.display()))?;
                Admin::connect(&admin)?.set_policy(&rego)?;
                eprintln!("resource policy replaced");
                Ok(())
            }
            PolicyCommand::Get { admin } => {
                let resp = Admin::connect(&admin)?.call("GET", "/kbs/v0/resource-policy", b"")?;
                let v: Value = serde_json::from_slice(&resp.body)?;
                let rego = URL_SAFE_NO_PAD
                    .decode(v["policy"].as_str().unwrap_or_default())
                    .context("policy is not base64url")?;
                std::io::stdout().write_all(&rego)?;
                Ok(())
            }
        },
    }
}
