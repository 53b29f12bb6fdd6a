//! Compiles the BPF LSM programs (`bpf/cvm.bpf.c`) with clang into an object the agent
//! embeds. Kernel types come from the hand-written `bpf/kernel.h` (CO-RE relocated at
//! load), so no BTF, bpftool or vmlinux.h is needed to build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("cvm.bpf.o");
    for f in ["bpf/cvm.bpf.c", "bpf/kernel.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let clang = std::env::var("CVM_CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-env-changed=CVM_CLANG");
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-Wall",
            "-Werror",
        ])
        // Reproducible objects: no build paths in the debug info.
        .arg(format!(
            "-fdebug-prefix-map={}=.",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["-c", "bpf/cvm.bpf.c", "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to compile bpf/cvm.bpf.c ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to compile the BPF LSM programs ({e}): install clang (./scripts/setup)"
        ),
    }
}
