//! Resource paths: `<repository>/<type>/<tag>`, as in `GET /kbs/v0/resource/...`. Each
//! part is 1 to 128 characters of `[A-Za-z0-9._-]`, and never `.` or `..`, so a path
//! maps to exactly one file under a broker's store and can never leave it. One rule for
//! everyone who names a resource: the client, the broker, PID1's init-data and the
//! bundles' manifests.

use std::fmt;

/// Longest part accepted.
pub const MAX_PART: usize = 128;

/// A validated resource path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourcePath {
    /// Repository.
    pub repository: String,
    /// Type.
    pub kind: String,
    /// Tag.
    pub tag: String,
}

/// A path that is not a resource path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourcePathError {
    /// Not three `/`-separated parts.
    #[error("resource path {0:?} is not <repository>/<type>/<tag>")]
    Shape(String),
    /// A part with a character outside `[A-Za-z0-9._-]`, empty, too long, `.` or `..`.
    #[error("resource path part {0:?} must be 1-128 characters of [A-Za-z0-9._-], not . or ..")]
    Part(String),
}

fn part(p: &str) -> Result<String, ResourcePathError> {
    let ok = !p.is_empty()
        && p.len() <= MAX_PART
        && p != "."
        && p != ".."
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(ResourcePathError::Part(
            p.chars().take(MAX_PART + 1).collect(),
        ))
    }
}

impl ResourcePath {
    /// Parse `repository/type/tag`.
    pub fn parse(path: &str) -> Result<Self, ResourcePathError> {
        let parts: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = parts.as_slice() else {
            return Err(ResourcePathError::Shape(path.chars().take(400).collect()));
        };
        Ok(Self {
            repository: part(repository)?,
            kind: part(kind)?,
            tag: part(tag)?,
        })
    }

    /// The three parts, as Trustee's policy input `data["resource-path"]` lists them.
    pub fn parts(&self) -> [&str; 3] {
        [&self.repository, &self.kind, &self.tag]
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_paths() {
        let p = ResourcePath::parse("cvm/state-key/v1.0_x").unwrap();
        assert_eq!(p.parts(), ["cvm", "state-key", "v1.0_x"]);
        assert_eq!(p.to_string(), "cvm/state-key/v1.0_x");
        for bad in [
            "a/b", "a/b/c/d", "", "a//c", "../b/c", "a/./c", "a/b/..", "a/b/c d", "a/b/c\0",
            "a/b/ü", "a/b/c%2f",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            ResourcePath::parse(&format!("a/b/{}", "x".repeat(129))),
            Err(ResourcePathError::Part(_))
        ));
        assert!(ResourcePath::parse(&format!("a/b/{}", "x".repeat(128))).is_ok());
    }
}
