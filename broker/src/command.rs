//! `serve`: start a broker from command-line arguments (shared by `cvm broker serve`
//! and the standalone `cvm-broker` binary).

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::admin_token::AdminSigner;
use crate::session::DEFAULT_LIFETIME;
use crate::state::{Broker, BrokerConfig};
use crate::tls::{TlsFiles, ensure_generated, server_config};

/// `serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The broker's folder: resources, policy, reference values, audit log, TLS
    /// identity and (if generated) the admin key [default: $CVM_CACHE/broker].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS (only for a broker a guest reaches through a
    /// channel that is already protected).
    #[arg(long)]
    pub insecure_http: bool,
    /// Server certificate chain (PEM); without it the broker makes its own CA.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the generated server certificate (repeatable).
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// Admin public key (Ed25519, PEM); without it the broker makes a key pair in its
    /// folder (`admin.key`, `admin.pub`).
    #[arg(long)]
    pub admin_public_key: Option<PathBuf>,
    /// CA bundle (PEM) that signs TPM EK certificates (repeatable) [`cvm broker serve`
    /// default: the swtpm local CA that `cvm run` uses].
    #[arg(long = "ek-ca")]
    pub ek_ca: Vec<PathBuf>,
    /// An AK (SubjectPublicKeyInfo, PEM or DER) trusted without a credential challenge
    /// (repeatable).
    #[arg(long = "trusted-ak")]
    pub trusted_aks: Vec<PathBuf>,
    /// TDX collateral (JSON) for offline quote verification.
    #[arg(long)]
    pub tdx_collateral: Option<PathBuf>,
    /// Accept the insecure `sample` TEE. Development only: sample evidence proves nothing.
    #[arg(long)]
    pub insecure_allow_sample: bool,
    /// Session and token lifetime, seconds.
    #[arg(long, default_value_t = DEFAULT_LIFETIME)]
    pub session_lifetime: u64,
    /// Print one JSON line (url, CA, admin key) once listening, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// What a started broker tells scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// The URL guests and admin commands use.
    pub url: String,
    /// The CA certificate to pin (absent for plain HTTP).
    pub ca: Option<PathBuf>,
    /// The admin private key, when the broker generated it.
    pub admin_key: Option<PathBuf>,
    /// The broker's folder.
    pub dir: PathBuf,
}

/// The default folder: `$CVM_CACHE/broker`, else `$XDG_CACHE_HOME/cvm/broker`, else
/// `~/.cache/cvm/broker`.
pub fn default_dir() -> PathBuf {
    let cache = std::env::var_os("CVM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("cvm")))
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
                .join(".cache/cvm")
        });
    cache.join("broker")
}

/// Make `dir/admin.key` and `dir/admin.pub` unless the public key exists.
pub fn ensure_admin_key(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (key, public) = (dir.join("admin.key"), dir.join("admin.pub"));
    if public.exists() {
        return Ok((key, public));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let signer = AdminSigner::generate();
    let pem = signer.to_pem()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("create {}", key.display()))?;
    std::io::Write::write_all(&mut f, pem.as_bytes())?;
    f.sync_all()?;
    // The public key last: its presence means the pair is complete.
    std::fs::write(&public, signer.public_pem()?)
        .with_context(|| format!("write {}", public.display()))?;
    Ok((key, public))
}

/// A broker serving on a thread of its own.
#[derive(Debug)]
pub struct Background {
    /// Where it listens and what to pin.
    pub ready: Ready,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Background {
    /// Stop serving and wait for the server thread.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    /// Wait until the server ends by itself (a signal, with `handle_signals`).
    pub fn wait(mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("broker thread panicked"))?,
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("broker thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Start a broker from `args` on its own thread; with `handle_signals` it also stops on
/// SIGINT or SIGTERM.
pub fn start(args: &ServeArgs, handle_signals: bool) -> anyhow::Result<Background> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (admin_key, admin_public) = match &args.admin_public_key {
        Some(p) => (None, p.clone()),
        None => {
            let (k, p) = ensure_admin_key(&dir)?;
            (Some(k), p)
        }
    };
    let mut config = BrokerConfig::new(&dir, &admin_public);
    config.ek_ca = args.ek_ca.clone();
    config.trusted_aks = args.trusted_aks.clone();
    config.tdx_collateral = args.tdx_collateral.clone();
    config.allow_sample = args.insecure_allow_sample;
    config.session_lifetime = args.session_lifetime;
    let broker = Arc::new(Broker::open(config)?);
    if args.insecure_allow_sample {
        tracing::warn!("the insecure sample TEE is accepted: development only");
    }
    let (tls, ca) = if args.insecure_http {
        (None, None)
    } else {
        match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (Some(server_config(c, k)?), None),
            _ => {
                let files = TlsFiles::in_dir(&dir);
                ensure_generated(&files, &args.tls_names)?;
                (
                    Some(server_config(&files.cert, &files.key)?),
                    Some(files.ca),
                )
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ready = Ready {
        url: format!("{scheme}://{addr}"),
        ca,
        admin_key,
        dir,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("cvm-broker".into())
        .spawn(move || {
            runtime.block_on(async move {
                let shutdown = async move {
                    if handle_signals {
                        tokio::select! {
                            _ = stopped => {}
                            () = shutdown_signal() => {}
                        }
                    } else {
                        let _ = stopped.await;
                    }
                };
                crate::server::serve(listener, broker, tls, shutdown).await?;
                tracing::info!("broker stopped");
                anyhow::Ok(())
            })
        })
        .context("start the broker thread")?;
    tracing::info!(url = %ready.url, "broker ready");
    Ok(Background {
        ready,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Start a broker and serve until SIGINT or SIGTERM.
pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let background = start(&args, true)?;
    let ready = &background.ready;
    if args.json {
        println!("{}", serde_json::to_string(ready)?);
    } else {
        println!("broker listening on {}", ready.url);
        if let Some(ca) = &ready.ca {
            println!("  CA to pin:  {}", ca.display());
        }
        if let Some(k) = &ready.admin_key {
            println!("  admin key:  {}", k.display());
        }
        println!("  audit log:  {}", ready.dir.join("audit.log").display());
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    background.wait()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, serve until stopped.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
