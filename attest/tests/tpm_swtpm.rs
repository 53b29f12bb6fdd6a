//! `TpmPcr` against a real TPM (swtpm over TCP), with tpm2-tools as the oracle.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{free_port, pcrread, swtpm, tcti};
use cvm_attest::register::{RegisterError, TpmPcr};
use cvm_attest::{EventKind, EventLog, HashAlg, RuntimeLog};

#[test]
fn extended_pcr_replays_and_matches_tpm2_tools() {
    let t = swtpm();
    let pcr = TpmPcr::open(&tcti(&t), 15).unwrap();
    assert_eq!(pcr.banks(), [HashAlg::Sha256, HashAlg::Sha384]);
    let mut log = RuntimeLog::new(Box::new(pcr), None);
    log.measure(EventKind::InitBinary, "/init", b"pid1 bytes")
        .unwrap();
    log.measure(EventKind::AgentBinary, "/usr/bin/cvm-agent", b"agent bytes")
        .unwrap();
    let snapshot: EventLog = log.log().clone();
    drop(log); // closes the TPM connection so tpm2-tools can use it

    for (alg, bank) in [(HashAlg::Sha256, "sha256"), (HashAlg::Sha384, "sha384")] {
        let actual = hex::decode(pcrread(&t, bank, 15)).unwrap();
        snapshot.verify_replay(alg, &actual).unwrap();
    }
    // A PCR we did not touch stays zero, and the log does not replay to it.
    let untouched = hex::decode(pcrread(&t, "sha256", 14)).unwrap();
    assert!(snapshot.verify_replay(HashAlg::Sha256, &untouched).is_err());
}

#[test]
fn read_back_through_tss_matches() {
    let t = swtpm();
    let mut pcr = TpmPcr::open(&tcti(&t), 16).unwrap();
    let before = pcr.read(HashAlg::Sha256).unwrap();
    cvm_attest::MeasurementRegister::extend(&mut pcr, &cvm_attest::Digests::of(b"x")).unwrap();
    let after = pcr.read(HashAlg::Sha256).unwrap();
    assert_eq!(
        after,
        HashAlg::Sha256.extend(&before, &HashAlg::Sha256.hash(b"x"))
    );
}

#[test]
fn bad_index_and_unreachable_tpm_are_errors() {
    assert!(matches!(
        TpmPcr::open("swtpm:host=127.0.0.1,port=1", 99),
        Err(RegisterError::BadIndex(99))
    ));
    let err = TpmPcr::open(&format!("swtpm:host=127.0.0.1,port={}", free_port()), 15)
        .err()
        .unwrap();
    assert!(err.to_string().contains("open TPM through swtpm:"), "{err}");
}
