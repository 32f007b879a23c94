//! One run of a grid as the grid knows it: its axes (labels, as tables show them), its config
//! and its identity, whose hash is the run's id and its folder's name (`runs/<id>/`).
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One run of a grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub id: String,
    /// Axis name -> the value's label (as tables show it).
    pub axes: BTreeMap<String, String>,
    /// The run's `RunConfig` as JSON.
    pub config: serde_json::Value,
    /// What the id hashes: by default the config; `grid::identity` adds the weights'
    /// and the split's content hashes (and, for a continued run, the run it continues).
    pub identity: serde_json::Value,
    /// The id of the finished run of fewer epochs this run goes on from (a grid whose
    /// `epochs` grew: `grid::continuation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<String>,
}

impl RunSpec {
    /// A spec whose identity is its config.
    pub fn new(axes: BTreeMap<String, String>, config: serde_json::Value) -> Self {
        let identity = config.clone();
        Self::with_identity(axes, config, identity)
    }

    /// The id is the first 12 hex digits of the SHA-256 of the identity's canonical JSON
    /// (compact, object keys sorted at every level), so the same run has the same id on every
    /// machine.
    pub fn with_identity(
        axes: BTreeMap<String, String>,
        config: serde_json::Value,
        identity: serde_json::Value,
    ) -> Self {
        let mut canonical = String::new();
        canonical_json(&identity, &mut canonical);
        let digest = Sha256::digest(canonical.as_bytes());
        let id = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self {
            id,
            axes,
            config,
            identity,
            continues: None,
        }
    }
}

/// Compact JSON with sorted object keys (what `serde_json::to_string` writes without the
/// `preserve_order` feature).
fn canonical_json(v: &serde_json::Value, s: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            s.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&Value::String(k.clone()).to_string());
                s.push(':');
                canonical_json(&m[k], s);
            }
            s.push('}');
        }
        Value::Array(a) => {
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                canonical_json(x, s);
            }
            s.push(']');
        }
        scalar => s.push_str(&scalar.to_string()),
    }
}

/// `n` runs along one axis, `draw` = 0, 1, … (for tests of what handles runs).
#[cfg(test)]
pub(crate) fn numbered_specs(n: usize) -> Vec<RunSpec> {
    (0..n)
        .map(|i| {
            RunSpec::new(
                BTreeMap::from([("draw".to_string(), i.to_string())]),
                serde_json::json!({ "draw": i }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(n: usize) -> Vec<RunSpec> {
        numbered_specs(n)
    }

    #[test]
    fn ids_hash_the_canonical_config() {
        // sha256('{"draw":0}') starts f992480c83cc; ids must never change between versions.
        assert_eq!(specs(1)[0].id, "f992480c83cc");
        let v = serde_json::json!({"z": true, "a": {"c": null, "b": [1, 2.5, "x"]}});
        let mut c = String::new();
        canonical_json(&v, &mut c);
        assert_eq!(c, r#"{"a":{"b":[1,2.5,"x"],"c":null},"z":true}"#);
        assert_eq!(RunSpec::new(BTreeMap::new(), v).id, "a21afcd76fa1");
    }
}
