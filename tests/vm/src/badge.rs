//! The Badge Request Tool on appliances of one broker: what the migration tests share
//! (broker, owner, sealed bundle with its state key, init-data, reference values), the
//! appliances' boots with the tool's port forwarded, and `cvm migrate` between them.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::workload::{Owner, Target, call, keygen, prepare, seal, wasm};
use crate::{Broker, Guest, cvm_bin, image, json_ok, repo_root};

/// The workload's name, and the broker path of its state key (and lease).
pub const NAME: &str = "badge-request";
pub const STATE_KEY: &str = "default/badge-request/state-key";

/// Roles (header values) of the tool's users.
pub const ADA: (&str, &str) = ("employee", "E000042");
pub const BOSS: (&str, &str) = ("manager", "E000001");
pub const SEC: (&str, &str) = ("security", "guard-7");

/// The caller key the tests' owner seals into the tool (`CALLER_KEY`): a fixed test
/// key, so [`token`] needs no state.
fn caller_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x42; 32])
}

/// A caller's token for `role` and `sub`, valid for an hour: a compact JWS (EdDSA), as
/// an identity provider would sign it.
pub fn token(role: &str, sub: &str) -> String {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"aud": NAME, "role": role, "sub": sub, "exp": exp});
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"EdDSA"}"#),
        b64(claims.to_string().as_bytes())
    );
    let sig = caller_key().sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// The tool's policy as shipped, with the tests' caller key in its env.
pub fn policy() -> String {
    use base64::Engine as _;
    let shipped =
        std::fs::read_to_string(repo_root().join("workloads/badge-request/policy.yaml")).unwrap();
    let key =
        base64::engine::general_purpose::STANDARD.encode(caller_key().verifying_key().as_bytes());
    let with_key = shipped.replacen("env: {", &format!("env: {{CALLER_KEY: \"{key}\", "), 1);
    assert_ne!(with_key, shipped, "policy.yaml has no `env: {{` line");
    with_key
}

/// Everything the appliances share, in the folder `dir`.
pub struct Badge {
    pub dir: PathBuf,
    pub broker: Broker,
    pub owner: Owner,
    pub bundle: PathBuf,
    pub init: PathBuf,
    pub reference: PathBuf,
}

impl Badge {
    /// A broker in `dir/broker`, an owner, the tool sealed with its content key and a
    /// state key uploaded, init-data and reference values for the test image.
    pub fn new(dir: &Path) -> Badge {
        let broker = Broker::start(&dir.join("broker"));
        let owner = keygen(dir, "owner");
        let policy = policy();
        let bundle = seal(
            &broker,
            &owner,
            &wasm("badge_request"),
            &policy,
            NAME,
            dir,
            true,
        );
        let (init, reference) = prepare(dir, &broker, &owner, image());
        Badge {
            dir: dir.to_owned(),
            broker,
            owner,
            bundle,
            init,
            reference,
        }
    }

    /// Start (not wait for) an appliance on the state disk `disk` (created on first
    /// use, kept across boots) with the tool's port 8082 forwarded to `port`.
    pub fn start(&self, disk: &str, port: u16) -> Guest {
        // Each appliance its own console log (the default is one file for every guest).
        let serial = self.dir.join(format!("{disk}.serial"));
        Guest::start(&[
            "--initdata",
            self.init.to_str().unwrap(),
            "--state-disk",
            self.dir.join(disk).to_str().unwrap(),
            "--serial-log",
            serial.to_str().unwrap(),
            "--forward",
            &format!("{port}:8082"),
        ])
    }

    /// The owner's view of `guest`.
    pub fn target(&self, guest: &Guest) -> Target {
        Target {
            agent: guest.agent.clone(),
            reference: self.reference.clone(),
        }
    }

    /// The broker's lease on the tool's state (`{value, holder}`).
    pub fn lease(&self) -> Value {
        json_ok(&self.broker.admin(&["counter", "get", STATE_KEY]))
    }

    /// `cvm migrate NAME --from --to [--via] --out DIR/out --json`, started in the
    /// background (stdout piped: the report).
    pub fn spawn_migrate(&self, from: &str, to: &str, via: Option<&str>, out: &str) -> Child {
        let mut c = Command::new(cvm_bin());
        c.args(["migrate", NAME, "--from", from, "--to", to]);
        if let Some(v) = via {
            c.args(["--via", v]);
        }
        c.args(["--reference", self.reference.to_str().unwrap()])
            .args(["--owner-key", self.owner.key.to_str().unwrap()])
            .arg("--out")
            .arg(self.dir.join(out))
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        c.spawn().unwrap()
    }
}

/// Wait for a `cvm migrate` started by [`Badge::spawn_migrate`]: its report (`Null`
/// when it printed none: its source went away mid-request).
pub fn report(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// One appliance: its disk, its forwarded port, and the guest while it runs.
pub struct Appliance {
    pub disk: &'static str,
    pub port: u16,
    pub guest: Option<Guest>,
}

impl Appliance {
    pub fn agent(&self) -> String {
        self.guest.as_ref().unwrap().agent.clone()
    }

    /// Kill its QEMU (a crash); [`Appliance::reboot`] boots it again from its disk.
    pub fn crash(&mut self) {
        let (code, r) = self.guest.take().unwrap().crash();
        eprintln!(
            "crashed {}: cvm run exited {code}: {}",
            self.disk, r["outcome"]
        );
    }

    pub fn reboot(&mut self, badge: &Badge) {
        self.guest = Some(badge.start(self.disk, self.port).wait_ready());
    }

    pub fn serves(&self) -> bool {
        call(self.port, "GET", "/state", SEC, None).0 == 200
    }
}

/// Two appliances (disks `a.img`, `b.img`) booted at once: two QEMU, two swtpm.
pub fn boot_pair(badge: &Badge) -> [Appliance; 2] {
    let mut apps = [
        Appliance {
            disk: "a.img",
            port: crate::workload::free_port(),
            guest: None,
        },
        Appliance {
            disk: "b.img",
            port: crate::workload::free_port(),
            guest: None,
        },
    ];
    let started = [
        badge.start(apps[0].disk, apps[0].port),
        badge.start(apps[1].disk, apps[1].port),
    ];
    for (app, g) in apps.iter_mut().zip(started) {
        app.guest = Some(g.wait_ready());
    }
    apps
}
