//! Helpers for the VM tests that seal and deploy workloads through `cvm`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Broker, cvm, json_ok, target_dir};

pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn fails(o: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected a failure naming {needle:?}, got success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

pub fn wasm(name: &str) -> PathBuf {
    let p = target_dir()
        .parent()
        .unwrap()
        .join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: ./scripts/build-workloads",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Owner {
    /// Private key file.
    pub key: PathBuf,
    /// Public key file.
    pub public: PathBuf,
}

pub fn keygen(dir: &Path, name: &str) -> Owner {
    let key = dir.join(format!("{name}.key"));
    ok(&cvm(&["keygen", "--out", key.to_str().unwrap()]));
    Owner {
        public: key.with_extension("pub"),
        key,
    }
}

/// `cvm seal`; uploads the content key unless `upload` is false.
pub fn seal(
    broker: &Broker,
    owner: &Owner,
    wasm: &Path,
    policy: &str,
    name: &str,
    dir: &Path,
    upload: bool,
) -> PathBuf {
    let policy_file = dir.join(format!("{name}.yaml"));
    std::fs::write(&policy_file, policy).unwrap();
    let out = dir.join(format!("{name}.bundle"));
    let resource = format!("default/{name}/key");
    let mut args = vec![
        "seal",
        "--wasm",
        wasm.to_str().unwrap(),
        "--policy",
        policy_file.to_str().unwrap(),
        "--name",
        name,
        "--key-resource",
        &resource,
        "--owner-key",
        owner.key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let key_out = dir.join(format!("{name}.content-key"));
    let broker_dir = broker.dir.to_str().unwrap();
    if upload {
        args.extend(["--upload", "--url", &broker.url, "--dir", broker_dir]);
    } else {
        args.extend(["--key-out", key_out.to_str().unwrap()]);
    }
    ok(&cvm(&args));
    out
}

/// The agent's address and the reference values `cvm` attests it against.
pub struct Target {
    /// `127.0.0.1:PORT`.
    pub agent: String,
    /// Reference values file.
    pub reference: PathBuf,
}

pub fn agent_cmd(t: &Target, owner: &Owner, args: &[&str]) -> std::process::Output {
    let mut full: Vec<&str> = args.to_vec();
    full.extend([
        "--to",
        &t.agent,
        "--reference",
        t.reference.to_str().unwrap(),
        "--owner-key",
        owner.key.to_str().unwrap(),
    ]);
    cvm(&full)
}

pub fn deploy(t: &Target, bundle: &Path, json: bool) -> std::process::Output {
    let mut args = vec![
        "deploy",
        bundle.to_str().unwrap(),
        "--to",
        &t.agent,
        "--reference",
        t.reference.to_str().unwrap(),
    ];
    if json {
        args.push("--json");
    }
    cvm(&args)
}

pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args(if body.is_empty() {
            vec![]
        } else {
            vec!["--data", body]
        })
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.trim().to_owned())
}

pub fn ps(t: &Target, owner: &Owner) -> Vec<Value> {
    let v = json_ok(&agent_cmd(t, owner, &["ps", "--json"]));
    v.as_array().unwrap().clone()
}

/// Init-data naming `broker` and trusting `owner`, reference values of `image` with it
/// imported into the broker (as `this-image`), and a state key: what an appliance that
/// runs workloads needs. Returns the init-data file and the reference values file.
pub fn prepare(d: &Path, broker: &Broker, owner: &Owner, image: &Path) -> (PathBuf, PathBuf) {
    let init = d.join("initdata.toml");
    ok(&cvm(&[
        "initdata",
        "--broker",
        &broker.guest_url(),
        "--broker-ca",
        broker.ca.to_str().unwrap(),
        "--owner",
        owner.public.to_str().unwrap(),
        "--out",
        init.to_str().unwrap(),
    ]));
    let reference = json_ok(&cvm(&[
        "measure",
        "--platform",
        "qemu",
        "--image",
        image.to_str().unwrap(),
        "--initdata",
        init.to_str().unwrap(),
        "--json",
    ]));
    let file = d.join("ref.json");
    std::fs::write(&file, reference.to_string()).unwrap();
    ok(&broker.admin(&[
        "reference",
        "import",
        file.to_str().unwrap(),
        "--name",
        "this-image",
    ]));
    ok(&broker.admin(&["resource", "put", "cvm/state/key", "--random", "32"]));
    (init, file)
}

/// A request to a workload's port as `who` (role and id, in a caller token for the
/// Badge Request Tool), through curl, the body from a file (an import is larger than a command
/// line); the status and the JSON answer (`Null` if none). Status 0: nothing answered.
pub fn call(
    port: u16,
    method: &str,
    path: &str,
    who: (&str, &str),
    body: Option<&Path>,
) -> (u16, Value) {
    let mut c = std::process::Command::new("curl");
    c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args([
            "-H",
            &format!(
                "authorization: Bearer {}",
                crate::badge::token(who.0, who.1)
            ),
        ])
        .args(["-H", "content-type: application/json"]);
    if let Some(b) = body {
        c.arg("--data-binary").arg(format!("@{}", b.display()));
    }
    let out = c
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (code.parse().unwrap_or(0), value)
}

/// Write `v` to `DIR/NAME.json` (a request body for [`call`]).
pub fn body(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p
}
