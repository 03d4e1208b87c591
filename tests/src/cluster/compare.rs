//! "What we wrote is what is stored": compares a JSON value the injector wrote
//! with the object the API server stored, which carries more (defaults, the
//! service-account token volume, generated names).

use serde_json::Value;

/// `Ok` when every field of `expected` is in `actual` with the same value.
/// Objects may have more fields in `actual`; arrays of named objects (containers,
/// volumes, env) are matched by `name` and may have more items in `actual`;
/// other arrays must match item by item. The error names the first difference
/// by its path.
pub fn contained_in(expected: &Value, actual: &Value) -> Result<(), String> {
    walk(expected, actual, "")
}

fn walk(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let at = format!("{path}.{k}");
                let Some(other) = a.get(k) else {
                    return Err(format!("{at}: missing (want {v})"));
                };
                walk(v, other, &at)?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.iter().all(|i| i.get("name").is_some()) => {
            for item in e {
                let name = &item["name"];
                let at = format!("{path}[name={name}]");
                let Some(other) = a.iter().find(|o| o.get("name") == Some(name)) else {
                    return Err(format!("{at}: missing"));
                };
                walk(item, other, &at)?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("{path}: {} items, want {}", a.len(), e.len()));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                walk(x, y, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: {actual}, want {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::contained_in;
    use serde_json::json;

    #[test]
    fn extra_fields_and_named_items_are_allowed_but_changes_are_not() {
        let want = json!({"containers": [{"name": "a", "args": ["x"]}]});
        let stored = json!({"containers": [
            {"name": "b"},
            {"name": "a", "args": ["x"], "imagePullPolicy": "IfNotPresent"}
        ], "dnsPolicy": "ClusterFirst"});
        assert_eq!(contained_in(&want, &stored), Ok(()));
        let changed = json!({"containers": [{"name": "a", "args": ["y"]}]});
        assert_eq!(
            contained_in(&want, &changed),
            Err(".containers[name=\"a\"].args[0]: \"y\", want \"x\"".to_owned())
        );
        let longer = json!({"containers": [{"name": "a", "args": ["x", "z"]}]});
        assert!(contained_in(&want, &longer).is_err());
        assert!(contained_in(&want, &json!({"containers": []})).is_err());
    }
}
