//! Badges, who may act on them, and what a valid request looks like.

use serde::{Deserialize, Serialize};

/// Sites badges are issued for when the policy's env sets no `SITES`.
pub const DEFAULT_SITES: [&str; 4] = ["Zurich", "Geneva", "Lausanne", "Bern"];
/// Most access zones on one badge.
pub const MAX_ZONES: usize = 10;

/// Where a badge is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Requested, waiting for a manager.
    Pending,
    /// Approved: the badge is active.
    Approved,
    /// Rejected by a manager.
    Rejected,
    /// Revoked by security after approval.
    Revoked,
}

impl Status {
    /// Parse the `status` query parameter (`active` is `approved`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" | "active" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }

    /// A badge in this state blocks another request by the same employee.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Approved)
    }
}

/// One badge and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Badge {
    /// `B` and six digits, allocated in order.
    pub id: String,
    /// `E` and six digits.
    pub employee_id: String,
    /// The employee's name as printed on the badge.
    pub name: String,
    /// The site.
    pub site: String,
    /// Access zones.
    pub zones: Vec<String>,
    /// Where it is in its life.
    pub status: Status,
    /// When it was requested (seconds since the epoch).
    pub requested_at: u64,
    /// Who requested it.
    pub requested_by: String,
    /// When a manager decided, or security revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    /// Who decided or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Why it was rejected or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A badge request as an employee (or security, importing) sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBadge {
    /// `E` and six digits.
    pub employee_id: String,
    /// Name on the badge.
    pub name: String,
    /// Site.
    pub site: String,
    /// Access zones.
    pub zones: Vec<String>,
}

/// A reason, for a rejection or a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// What a caller may do (the `role` of their token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Requests badges for themselves and reads their own.
    Employee,
    /// Approves and rejects.
    Manager,
    /// Lists active badges, revokes, imports, reads the audit trail.
    Security,
}

impl Role {
    /// Parse a token's role.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "employee" => Some(Self::Employee),
            "manager" => Some(Self::Manager),
            "security" => Some(Self::Security),
            _ => None,
        }
    }
}

/// `E` and six digits.
pub fn valid_employee_id(s: &str) -> bool {
    s.len() == 7 && s.starts_with('E') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// `B` and six or more digits.
pub fn valid_badge_id(s: &str) -> bool {
    s.len() >= 7 && s.starts_with('B') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// 1 to `max` characters after trimming, none of them control characters.
fn text(field: &str, s: &str, max: usize) -> Result<(), String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if t.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if t.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character"));
    }
    if t.len() != s.len() {
        return Err(format!("{field} has leading or trailing spaces"));
    }
    Ok(())
}

/// Check a badge request against the sites the service issues badges for.
pub fn validate_new(b: &NewBadge, sites: &[String]) -> Result<(), String> {
    if !valid_employee_id(&b.employee_id) {
        return Err(format!(
            "employee_id {:?} is not E followed by six digits",
            b.employee_id
        ));
    }
    text("name", &b.name, 100)?;
    if !sites.contains(&b.site) {
        return Err(format!(
            "site {:?} is not one of {}",
            b.site,
            sites.join(", ")
        ));
    }
    if b.zones.is_empty() || b.zones.len() > MAX_ZONES {
        return Err(format!("zones must list 1 to {MAX_ZONES} access zones"));
    }
    for (i, z) in b.zones.iter().enumerate() {
        let ok = !z.is_empty()
            && z.len() <= 32
            && z.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && z.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !ok {
            return Err(format!(
                "zone {z:?} is not 1-32 characters of a-z, 0-9 and -"
            ));
        }
        if b.zones[..i].contains(z) {
            return Err(format!("zone {z:?} is listed twice"));
        }
    }
    Ok(())
}

/// Check a rejection or revocation reason.
pub fn validate_reason(r: &Reason) -> Result<(), String> {
    text("reason", &r.reason, 500)
}

/// Check a caller's id (the token's `sub`).
pub fn validate_actor(s: &str) -> Result<(), String> {
    text("the token's sub", s, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Vec<String> {
        DEFAULT_SITES.iter().map(|s| (*s).to_owned()).collect()
    }

    fn req() -> NewBadge {
        NewBadge {
            employee_id: "E000042".into(),
            name: "Ada Lovelace".into(),
            site: "Zurich".into(),
            zones: vec!["lobby".into(), "lab-2".into()],
        }
    }

    #[test]
    fn a_good_request_passes() {
        assert_eq!(validate_new(&req(), &sites()), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = fn(&mut NewBadge);
        let cases: [(Change, &str); 8] = [
            (|b| b.employee_id = "E42".into(), "employee_id"),
            (|b| b.employee_id = "X000042".into(), "employee_id"),
            (|b| b.name = " Ada".into(), "name"),
            (|b| b.name = String::new(), "name"),
            (|b| b.name = "A\u{7}".into(), "control"),
            (|b| b.site = "Paris".into(), "site \"Paris\""),
            (|b| b.zones.clear(), "zones"),
            (|b| b.zones.push("lobby".into()), "twice"),
        ];
        for (change, needle) in cases {
            let mut b = req();
            change(&mut b);
            let err = validate_new(&b, &sites()).unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let mut b = req();
        b.zones = vec!["Lab".into()];
        assert!(
            validate_new(&b, &sites())
                .unwrap_err()
                .contains("zone \"Lab\"")
        );
        b.zones = (0..11).map(|i| format!("z{i}")).collect();
        assert!(validate_new(&b, &sites()).is_err());
    }

    #[test]
    fn ids_and_roles() {
        assert!(valid_employee_id("E123456"));
        assert!(!valid_employee_id("E12345"));
        assert!(!valid_employee_id("E12345x"));
        assert!(valid_badge_id("B000001"));
        assert!(!valid_badge_id("B00001"));
        assert!(!valid_badge_id("../x"));
        assert_eq!(Role::parse("manager"), Some(Role::Manager));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Status::parse("active"), Some(Status::Approved));
    }
}
