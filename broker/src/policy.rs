//! The resource policy: Rego (`package policy`, rule `allow`) evaluated with `regorus`,
//! with Trustee's inputs so its policies carry over: `input` is the attestation token's
//! claims, `data` is `{"plugin": "resource", "resource-path": [repo, type, tag],
//! "query": {}}`. Anything but a literal `true` denies.

use serde_json::{Value, json};

use crate::resource_path::ResourcePath;

/// The policy a broker starts with: release only to evidence the verifier affirmed,
/// and never to the insecure `sample` TEE (as Trustee's default).
pub const DEFAULT_POLICY: &str = r#"package policy
import rego.v1

default allow := false

allow if {
	input.submods.cpu0["ear.status"] == "affirming"
	not input.submods.cpu0["ear.veraison.annotated-evidence"].sample
}
"#;

/// A policy that does not load or does not evaluate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The Rego does not parse or compile.
    #[error("resource policy is not valid Rego: {0}")]
    Invalid(String),
    /// Evaluation failed.
    #[error("resource policy evaluation failed: {0}")]
    Eval(String),
}

/// A loaded resource policy.
#[derive(Clone)]
pub struct ResourcePolicy {
    engine: regorus::Engine,
}

impl std::fmt::Debug for ResourcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourcePolicy(..)")
    }
}

impl ResourcePolicy {
    /// Load `rego`; it must define `data.policy.allow`.
    pub fn new(rego: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("resource-policy.rego".into(), rego.into())
            .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        let policy = Self { engine };
        // Evaluate once on empty input so a policy that cannot evaluate is refused now,
        // not at the first release.
        policy.allows(
            &json!({}),
            &ResourcePath::parse("a/b/c").map_err(|e| PolicyError::Invalid(e.to_string()))?,
        )?;
        Ok(policy)
    }

    /// Whether the token `claims` may have the resource at `path`.
    pub fn allows(&self, claims: &Value, path: &ResourcePath) -> Result<bool, PolicyError> {
        let mut engine = self.engine.clone();
        let eval = |e: String| PolicyError::Eval(e);
        engine.set_input(
            regorus::Value::from_json_str(&claims.to_string()).map_err(|e| eval(e.to_string()))?,
        );
        let data = json!({"plugin": "resource", "resource-path": path.parts(), "query": {}});
        engine
            .add_data(
                regorus::Value::from_json_str(&data.to_string())
                    .map_err(|e| eval(e.to_string()))?,
            )
            .map_err(|e| eval(e.to_string()))?;
        let v = engine
            .eval_rule("data.policy.allow".into())
            .map_err(|e| eval(e.to_string()))?;
        Ok(v == regorus::Value::from(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(tee: &str, status: &str) -> Value {
        json!({"submods": {"cpu0": {
            "ear.status": status,
            "ear.veraison.annotated-evidence": {tee: {"pcr15": "ab"}},
        }}})
    }

    fn path(p: &str) -> ResourcePath {
        ResourcePath::parse(p).unwrap()
    }

    #[test]
    fn default_policy_affirmed_only_never_sample() {
        let p = ResourcePolicy::new(DEFAULT_POLICY).unwrap();
        assert!(
            p.allows(&claims("tpm", "affirming"), &path("cvm/state/key"))
                .unwrap()
        );
        assert!(
            !p.allows(&claims("tpm", "contraindicated"), &path("cvm/state/key"))
                .unwrap()
        );
        assert!(
            !p.allows(&claims("sample", "affirming"), &path("cvm/state/key"))
                .unwrap()
        );
        assert!(!p.allows(&json!({}), &path("cvm/state/key")).unwrap());
    }

    #[test]
    fn path_and_claim_specific_policy() {
        let rego = r#"package policy
import rego.v1
default allow := false
allow if {
	data["resource-path"][0] == "cvm"
	input.submods.cpu0["ear.veraison.annotated-evidence"].tpm.pcr15 == "ab"
}
"#;
        let p = ResourcePolicy::new(rego).unwrap();
        assert!(
            p.allows(&claims("tpm", "affirming"), &path("cvm/state/key"))
                .unwrap()
        );
        assert!(
            !p.allows(&claims("tpm", "affirming"), &path("other/state/key"))
                .unwrap()
        );
        assert!(
            !p.allows(&claims("snp", "affirming"), &path("cvm/state/key"))
                .unwrap()
        );
        // A policy whose allow is not a boolean true denies.
        let odd = ResourcePolicy::new("package policy\nallow := \"yes\"\n").unwrap();
        assert!(
            !odd.allows(&claims("tpm", "affirming"), &path("cvm/a/b"))
                .unwrap()
        );
    }

    #[test]
    fn invalid_policies_are_refused_at_load() {
        assert!(matches!(
            ResourcePolicy::new("package policy\nallow if {"),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            ResourcePolicy::new("not rego at all"),
            Err(PolicyError::Invalid(_))
        ));
    }
}
