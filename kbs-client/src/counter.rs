//! Monotonic counters the broker keeps for attested TEEs: an extension of the
//! KBS protocol (`GET`/`POST /kbs/v0/counter/<repo>/<type>/<tag>`). A counter is read
//! and advanced with the same attestation token and the same resource policy as the
//! resource at that path, so only an appliance that may have a workload's state key
//! can move that workload's state version. Advancing is a compare-and-set: the
//! broker refuses (409 `CounterConflict`) unless the counter still holds `expect`,
//! and refuses any value that does not move forward.
//!
//! Unlike a resource, which is encrypted to the TEE key the evidence bound, a counter
//! answers whoever presents the token: the token lives minutes and only crosses the
//! guest's pinned TLS connection to the broker, so in practice that is the attested
//! guest; a leaked token could move a counter forward (refusing service), never back.

use serde::{Deserialize, Serialize};

/// Longest `holder` (an opaque label: which appliance holds the counted state).
pub const MAX_HOLDER: usize = 256;

/// A counter's value. A counter never written reads as value 0, no holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counter {
    /// The value; only ever grows.
    pub value: u64,
    /// Who wrote it last (opaque to the broker).
    #[serde(default)]
    pub holder: String,
}

/// `POST` body: set the counter to `value`/`holder` if it still holds `expect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterUpdate {
    /// The value the writer last read.
    pub expect: u64,
    /// The new value (greater than `expect`).
    pub value: u64,
    /// The new holder.
    #[serde(default)]
    pub holder: String,
}

impl CounterUpdate {
    /// Whether the update is well formed: forward, and a short holder.
    pub fn check(&self) -> Result<(), String> {
        if self.value <= self.expect {
            return Err(format!(
                "a counter only moves forward: value {} is not greater than expect {}",
                self.value, self.expect
            ));
        }
        if self.holder.len() > MAX_HOLDER || self.holder.chars().any(char::is_control) {
            return Err(format!(
                "holder must be at most {MAX_HOLDER} bytes without control characters"
            ));
        }
        Ok(())
    }

    /// The counter this update writes.
    pub fn counter(&self) -> Counter {
        Counter {
            value: self.value,
            holder: self.holder.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_must_move_forward_with_a_short_holder() {
        let u = |expect, value, holder: &str| CounterUpdate {
            expect,
            value,
            holder: holder.into(),
        };
        assert!(u(0, 1, "a").check().is_ok());
        assert!(
            u(3, 3, "a")
                .check()
                .unwrap_err()
                .contains("only moves forward")
        );
        assert!(u(4, 2, "").check().is_err());
        assert!(u(0, 1, &"x".repeat(MAX_HOLDER + 1)).check().is_err());
        assert!(u(0, 1, "a\nb").check().is_err());
    }
}
