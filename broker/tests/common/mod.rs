//! A real broker for tests: HTTPS on a loopback port with its own generated CA, run on
//! a tokio runtime in a background thread, stopped on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use cvm_broker::admin_token::AdminSigner;
use cvm_broker::state::{Broker, BrokerConfig, now};
use cvm_broker::tls::{TlsFiles, ensure_generated, server_config};
use cvm_kbs_client::client::ClientConfig;
use cvm_kbs_client::http::{BrokerTls, HttpResponse, Transport};

pub struct TestBroker {
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub admin: AdminSigner,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Options {
    pub allow_sample: bool,
    pub session_lifetime: u64,
    pub ek_ca: Option<PathBuf>,
    /// Reuse this folder (a restart); otherwise a fresh one.
    pub dir: Option<tempfile::TempDir>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_sample: false,
            session_lifetime: 300,
            ek_ca: None,
            dir: None,
        }
    }
}

pub fn start(opts: Options) -> TestBroker {
    let dir = opts.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let admin = AdminSigner::generate();
    let admin_pub = dir.path().join("admin.pub");
    std::fs::write(&admin_pub, admin.public_pem().unwrap()).unwrap();
    let mut config = BrokerConfig::new(dir.path(), &admin_pub);
    config.allow_sample = opts.allow_sample;
    config.session_lifetime = opts.session_lifetime;
    config.ek_ca = opts.ek_ca.into_iter().collect();
    let broker = Arc::new(Broker::open(config).unwrap());
    let files = TlsFiles::in_dir(dir.path());
    ensure_generated(&files, &[]).unwrap();
    let tls = server_config(&files.cert, &files.key).unwrap();
    let ca_pem = std::fs::read(&files.ca).unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            cvm_broker::server::serve(listener, broker, Some(tls), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    TestBroker {
        url: format!("https://{addr}"),
        ca_pem,
        admin,
        dir,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl TestBroker {
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(&self.url, BrokerTls::Pinned(self.ca_pem.clone()));
        c.retries = 0;
        c
    }

    pub fn transport(&self) -> Transport {
        Transport::new(
            &self.url,
            &BrokerTls::Pinned(self.ca_pem.clone()),
            std::time::Duration::from_secs(10),
        )
        .unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.admin.token(now(), 300)
    }

    /// An admin call with a valid token.
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.transport()
            .call(
                method,
                path,
                None,
                Some(&self.admin_token()),
                Some(("application/octet-stream", body)),
            )
            .unwrap()
    }

    pub fn put_resource(&self, path: &str, bytes: &[u8]) {
        let r = self.admin("POST", &format!("/kbs/v0/resource/{path}"), bytes);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    pub fn set_policy(&self, rego: &str) {
        use base64::Engine as _;
        let body = serde_json::json!({
            "policy": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rego)
        });
        let r = self.admin(
            "POST",
            "/kbs/v0/resource-policy",
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    /// Stop the server and hand back its folder (for a restart).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub const ALLOW_ALL: &str = "package policy\nimport rego.v1\ndefault allow := true\n";
