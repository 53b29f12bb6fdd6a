//! RCAR sessions: `/auth` opens one with a fresh 32-byte nonce (sent as standard
//! base64, as Trustee's KBS does) under a random id (the `kbs-session-id` cookie);
//! `/attest` must name a live session and answer its nonce, once; resources need an
//! attested, unexpired session (or a bearer token). Sessions expire, and their number
//! is bounded so a flood of `/auth` calls cannot exhaust memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::tpm::verifier::AkChallenge;
use rand_core::{OsRng, RngCore as _};

/// How long a session lives, seconds (Trustee's default: 5 minutes).
pub const DEFAULT_LIFETIME: u64 = 300;
/// Most live sessions.
pub const MAX_SESSIONS: usize = 10_000;

/// A session that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// No such session (never opened, or already evicted).
    #[error("unknown session")]
    Unknown,
    /// The session expired.
    #[error("session expired")]
    Expired,
    /// The evidence answers another nonce.
    #[error("nonce mismatch: the runtime data does not answer this session's challenge")]
    Nonce,
    /// The session's challenge was already answered: a replay.
    #[error("this session's nonce was already used")]
    Reused,
    /// Resources asked for before attestation.
    #[error("session is not attested")]
    NotAttested,
    /// Too many live sessions.
    #[error("too many live sessions, try again later")]
    Full,
}

/// One session's state.
#[derive(Debug, Clone)]
pub struct Session {
    /// The TEE named in `/auth`.
    pub tee: String,
    /// The challenge nonce (standard base64).
    pub nonce: String,
    /// When it expires, seconds since the epoch.
    pub expires: u64,
    /// The credential challenge sent for the guest's AK (`tpm`), if any.
    pub ak_challenge: Option<Arc<AkChallenge>>,
    /// The token issued by `/attest`, once attested.
    pub token: Option<String>,
}

/// All live sessions.
#[derive(Debug)]
pub struct Sessions {
    lifetime: u64,
    max: usize,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Sessions living `lifetime` seconds, at most `max` at once.
    pub fn new(lifetime: u64, max: usize) -> Self {
        Self {
            lifetime,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Every update replaces whole entries, so a poisoned map is still consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open a session for `tee` at `now`, remembering the AK challenge sent with its
    /// nonce: its id and nonce.
    pub fn open(
        &self,
        tee: &str,
        ak_challenge: Option<AkChallenge>,
        now: u64,
    ) -> Result<(String, String), SessionError> {
        let mut map = self.lock();
        if map.len() >= self.max {
            map.retain(|_, s| s.expires > now);
            if map.len() >= self.max {
                return Err(SessionError::Full);
            }
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let nonce = STANDARD.encode(nonce);
        map.insert(
            id.clone(),
            Session {
                tee: tee.to_owned(),
                nonce: nonce.clone(),
                expires: now + self.lifetime,
                ak_challenge: ak_challenge.map(Arc::new),
                token: None,
            },
        );
        Ok((id, nonce))
    }

    fn live(map: &HashMap<String, Session>, id: &str, now: u64) -> Result<Session, SessionError> {
        let s = map.get(id).ok_or(SessionError::Unknown)?;
        if s.expires <= now {
            return Err(SessionError::Expired);
        }
        Ok(s.clone())
    }

    /// The live session `id`, for `/attest`: its challenge must not be answered yet and
    /// `nonce` must be it. Returns the session (its TEE).
    pub fn challenge(&self, id: &str, nonce: &str, now: u64) -> Result<Session, SessionError> {
        let map = self.lock();
        let s = Self::live(&map, id, now)?;
        if s.token.is_some() {
            return Err(SessionError::Reused);
        }
        if s.nonce != nonce {
            return Err(SessionError::Nonce);
        }
        Ok(s)
    }

    /// Record the token `/attest` issued for session `id` (its nonce is then used up).
    pub fn attested(&self, id: &str, token: String, now: u64) -> Result<(), SessionError> {
        let mut map = self.lock();
        let _ = Self::live(&map, id, now)?;
        let s = map.get_mut(id).ok_or(SessionError::Unknown)?;
        if s.token.is_some() {
            return Err(SessionError::Reused);
        }
        s.token = Some(token);
        Ok(())
    }

    /// The token of an attested, live session.
    pub fn token(&self, id: &str, now: u64) -> Result<String, SessionError> {
        let map = self.lock();
        Self::live(&map, id, now)?
            .token
            .ok_or(SessionError::NotAttested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_answers_its_nonce_once() {
        let s = Sessions::new(300, 10);
        let (id, nonce) = s.open("tpm", None, 1000).unwrap();
        assert_eq!(STANDARD.decode(&nonce).unwrap().len(), 32);
        assert_eq!(id.len(), 32);
        assert_eq!(s.token(&id, 1001), Err(SessionError::NotAttested));
        assert_eq!(
            s.challenge(&id, "other", 1001).unwrap_err(),
            SessionError::Nonce
        );
        assert_eq!(s.challenge(&id, &nonce, 1001).unwrap().tee, "tpm");
        s.attested(&id, "tok".into(), 1002).unwrap();
        assert_eq!(s.token(&id, 1003).unwrap(), "tok");
        // The same nonce again: a replay.
        assert_eq!(
            s.challenge(&id, &nonce, 1004).unwrap_err(),
            SessionError::Reused
        );
        assert_eq!(
            s.attested(&id, "again".into(), 1004),
            Err(SessionError::Reused)
        );
    }

    #[test]
    fn expiry_unknown_and_bound() {
        let s = Sessions::new(300, 2);
        let (a, nonce) = s.open("tpm", None, 1000).unwrap();
        assert_eq!(
            s.challenge(&a, &nonce, 1300).unwrap_err(),
            SessionError::Expired
        );
        assert_eq!(s.token("nope", 1000), Err(SessionError::Unknown));
        s.open("tpm", None, 1000).unwrap();
        assert_eq!(s.open("tpm", None, 1100), Err(SessionError::Full));
        // Expired sessions make room.
        assert!(s.open("tpm", None, 1300).is_ok());
        let (x, y) = (s.open("snp", None, 1301), s.open("snp", None, 1302));
        assert!(x.is_ok() && y.is_err());
    }
}
