//! A TCP relay on the host between two appliances (`cvm migrate --via`): it passes
//! every connection but one, which it cuts at a chosen point or holds until the test
//! decides, so a test can act (stop the broker, kill a QEMU) at an exact step of a
//! migration.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What the relay does to the connection it disturbs (the source's offer).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// None: every byte passes.
    None,
    /// Cut after this many bytes from the source, before the rest of its request.
    CutRequest(usize),
    /// Cut at the destination's first bytes after the source sent this many: with 0,
    /// in the TLS handshake; past the bundle's size, the HTTP answer to a whole offer.
    CutAnswer(usize),
    /// Hold the connection before a byte passes (the source has released) until the
    /// test opens the gate.
    HoldOffer,
    /// Pass the offer, hold the destination's answer (it has committed and serves)
    /// until the test opens the gate.
    HoldAnswer,
}

/// What becomes of a held connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Pass,
    Drop,
}

/// Whether a connection is held, and the test's decision for it, with the condition
/// both sides wait on.
type HeldGate = (Mutex<(bool, Option<Gate>)>, Condvar);

/// A relay on 127.0.0.1 to an appliance's agent; its second connection meets the
/// fault (in a migration the first is the destination's passport, the second the
/// offer).
pub struct Relay {
    pub port: u16,
    /// Whether a connection is held; then the test's decision.
    gate: Arc<HeldGate>,
    /// Whether the disturbed connection has ended.
    done: Arc<(Mutex<bool>, Condvar)>,
}

/// Bytes of the offer after which the destination's bytes may be its answer: they
/// are once the source has also been quiet for [`ANSWER_QUIET`] (TLS session tickets
/// come while the source is still sending; the answer only after the destination has
/// compiled and started the workload).
pub const OFFER_AT_LEAST: usize = 64 << 10;
/// How long the source must have sent nothing before the destination's bytes count
/// as its answer.
pub const ANSWER_QUIET: Duration = Duration::from_secs(1);
/// How long a step may take before the test gives up.
pub const STEP: Duration = Duration::from_secs(600);

impl Relay {
    pub fn start(target: String, fault: Fault) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            gate: Arc::new((Mutex::new((false, None)), Condvar::new())),
            done: Arc::new((Mutex::new(false), Condvar::new())),
        };
        let (gate, done) = (relay.gate.clone(), relay.done.clone());
        let seen = AtomicUsize::new(0);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let victim = seen.fetch_add(1, Ordering::SeqCst) + 1 == 2;
                let (target, gate, done) = (target.clone(), gate.clone(), done.clone());
                std::thread::spawn(move || {
                    let fault = victim.then_some(fault);
                    if let Some(Fault::HoldOffer) = fault
                        && hold(&gate) == Gate::Drop
                    {
                        let _ = client.shutdown(Shutdown::Both);
                    } else if let Ok(server) = TcpStream::connect(&target) {
                        pump(client, server, fault, &gate);
                    }
                    if victim {
                        *done.0.lock().unwrap() = true;
                        done.1.notify_all();
                    }
                });
            }
        });
        relay
    }

    /// `10.0.2.2:PORT`: the relay as the source (a guest) reaches it.
    pub fn via(&self) -> String {
        format!("10.0.2.2:{}", self.port)
    }

    /// Wait until the disturbed connection is held.
    pub fn wait_held(&self) {
        let (m, c) = &*self.gate;
        let (g, timeout) = c
            .wait_timeout_while(m.lock().unwrap(), STEP, |(held, _)| !*held)
            .unwrap();
        assert!(
            !timeout.timed_out() && g.0,
            "the relay never held the offer"
        );
    }

    /// Let the held connection go on, or drop it.
    pub fn open(&self, gate: Gate) {
        self.gate.0.lock().unwrap().1 = Some(gate);
        self.gate.1.notify_all();
    }

    /// Wait until the disturbed connection has ended.
    pub fn wait_done(&self) {
        let (m, c) = &*self.done;
        let (_done, timeout) = c
            .wait_timeout_while(m.lock().unwrap(), STEP, |d| !*d)
            .unwrap();
        assert!(!timeout.timed_out(), "the offer's connection never ended");
    }
}

/// Mark the connection held and wait for the test's decision.
fn hold(gate: &HeldGate) -> Gate {
    let (m, c) = gate;
    m.lock().unwrap().0 = true;
    c.notify_all();
    let g = c
        .wait_while(m.lock().unwrap(), |(_, d)| d.is_none())
        .unwrap();
    g.1.unwrap()
}

/// Copy both ways, with the fault applied; close both ends at the end.
fn pump(client: TcpStream, server: TcpStream, fault: Option<Fault>, gate: &HeldGate) {
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_in, mut c_out) = (server, client);
    let total = Arc::new(AtomicUsize::new(0));
    let counted = total.clone();
    let started = std::time::Instant::now();
    // Milliseconds after `started` of the source's last bytes.
    let last_up = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last_up_w = last_up.clone();
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        let mut sent = 0usize;
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(Fault::CutRequest(limit)) = fault
                && sent + n >= limit
            {
                let _ = s_out.write_all(&buf[..limit - sent]);
                let _ = s_out.shutdown(Shutdown::Both);
                let _ = c_in.shutdown(Shutdown::Both);
                return;
            }
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
            counted.store(sent, Ordering::SeqCst);
            last_up_w.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16 << 10];
    let mut held = false;
    loop {
        let n = match s_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let sent = total.load(Ordering::SeqCst);
        let quiet = started.elapsed().as_millis() as u64
            >= last_up.load(Ordering::SeqCst) + ANSWER_QUIET.as_millis() as u64;
        let answer = |after: usize| sent >= after && (after == 0 || quiet);
        match fault {
            Some(Fault::CutAnswer(after)) if answer(after) => {
                // The destination answered: the answer is lost.
                let _ = s_in.shutdown(Shutdown::Both);
                break;
            }
            Some(Fault::HoldAnswer) if answer(OFFER_AT_LEAST) && !held => {
                held = true;
                if hold(gate) == Gate::Drop {
                    let _ = s_in.shutdown(Shutdown::Both);
                    break;
                }
            }
            _ => {}
        }
        if c_out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = up.join();
}
