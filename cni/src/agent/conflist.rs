//! The plugin's entry in the node's primary CNI configuration.
//!
//! The container runtime uses the first file by name in the configuration
//! directory whose extension is `.conf`, `.conflist` or `.json`. The agent
//! appends its entry to that file's plugin list, after the plugins that make
//! the pod's network, so the rules are installed once the namespace has its
//! interfaces. The change is idempotent: any entry of its type is removed
//! before its own is appended, and a file that already holds exactly one
//! entry equal to its own is left alone (even if another plugin follows it:
//! moving it to the end would fight another agent that does the same).
//!
//! A single-plugin `.conf` (or `.json`) cannot hold a chain: it becomes a
//! `.conflist` of the same base name holding the old plugin and the entry, and
//! the old file is removed. Nothing else in the file changes, but keys are
//! written in sorted order (the JSON is parsed into a map that keeps no order).
//!
//! The functions over [`Value`] are pure; [`ensure`], [`remove_all`] and
//! [`check`] apply them to the directory.

use std::path::{Path, PathBuf};

use kube_mtls_contract::names::CNI_BINARY;
use serde_json::{Map, Value, json};

use super::files::{self, FileError, Ownership};

/// The runtime capability that makes containerd (1.5 and later) pass the
/// pod's annotations to the plugin in `runtimeConfig`.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Extensions of the files a runtime loads, as libcni lists them.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// A configuration the agent cannot change.
#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "cannot list the CNI configuration directory {dir} (--cni-conf-dir, KUBE_MTLS_CNI_CONF_DIR): {source}"
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JSON ({reason}); it is left alone until it is")]
    Json { path: PathBuf, reason: String },
    #[error(
        "{path} is neither a plugin list (\"plugins\") nor a plugin (\"type\"); it is left alone"
    )]
    Shape { path: PathBuf },
}

/// The plugin's entry, pointing at the kubeconfig it reads pods with.
pub fn entry(kubeconfig: &Path) -> Value {
    json!({
        "type": CNI_BINARY,
        "kubeconfig": kubeconfig.to_string_lossy(),
        "capabilities": { POD_ANNOTATIONS_CAPABILITY: true },
    })
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(CNI_BINARY)
}

/// The plugin list of a conflist, `None` for a single-plugin configuration.
fn plugins(conf: &Value) -> Option<&Vec<Value>> {
    conf.get("plugins").and_then(Value::as_array)
}

/// Whether `conf` is a plugin list holding exactly one entry of ours, equal to `entry`.
pub fn has_entry(conf: &Value, entry: &Value) -> bool {
    let Some(list) = plugins(conf) else {
        return false;
    };
    let ours: Vec<&Value> = list.iter().filter(|p| is_ours(p)).collect();
    ours.len() == 1 && ours[0] == entry
}

/// Whether `conf` lists any entry of the plugin's type.
pub fn has_any_entry(conf: &Value) -> bool {
    plugins(conf).is_some_and(|list| list.iter().any(is_ours))
}

/// A single-plugin configuration as a plugin list: `cniVersion` and `name`
/// move to the list, the rest is its one plugin. `None` when `conf` is neither.
pub fn to_list(conf: Value) -> Option<Value> {
    if plugins(&conf).is_some() {
        return Some(conf);
    }
    let Value::Object(mut plugin) = conf else {
        return None;
    };
    plugin.get("type")?;
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.remove(key) {
            list.insert(key.to_owned(), v);
        }
    }
    list.insert(
        "plugins".to_owned(),
        Value::Array(vec![Value::Object(plugin)]),
    );
    Some(Value::Object(list))
}

/// `conf` as a plugin list with `entry` last and no other entry of its type;
/// `None` when `conf` is neither a plugin list nor a plugin.
pub fn with_entry(conf: Value, entry: Value) -> Option<Value> {
    let (mut list, _) = without_entry(to_list(conf)?);
    if let Some(Value::Array(plugins)) = list.get_mut("plugins") {
        plugins.push(entry);
    }
    Some(list)
}

/// `conf` without any entry of the plugin's type, and whether it had one.
pub fn without_entry(mut conf: Value) -> (Value, bool) {
    let mut removed = false;
    if let Some(Value::Array(plugins)) = conf.get_mut("plugins") {
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        removed = plugins.len() != before;
    }
    (conf, removed)
}

/// The configuration files in `dir`, in the order the runtime considers them.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConflistError> {
    let read = std::fs::read_dir(dir).map_err(|source| ConflistError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut found: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
                && p.is_file()
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The configuration the runtime uses: the first by name.
pub fn primary(dir: &Path) -> Result<Option<PathBuf>, ConflistError> {
    Ok(config_files(dir)?.into_iter().next())
}

fn read_json(path: &Path) -> Result<Option<Value>, ConflistError> {
    let Some(bytes) = files::read_if_present(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ConflistError::Json {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn render(conf: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(conf).unwrap_or_default();
    out.push(b'\n');
    out
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// No configuration yet: the node's network plugin has not written one.
    NoConfig,
    /// The entry was already in this file.
    InPlace(PathBuf),
    /// The entry was written into this file (converted from a `.conf` when
    /// `converted_from` says so).
    Written {
        path: PathBuf,
        converted_from: Option<PathBuf>,
    },
}

/// Puts `entry` into the primary configuration of `dir` unless it is there.
pub fn ensure(dir: &Path, entry: &Value) -> Result<Ensured, ConflistError> {
    let Some(path) = primary(dir)? else {
        return Ok(Ensured::NoConfig);
    };
    let Some(conf) = read_json(&path)? else {
        // Removed since the listing: the next sync looks again.
        return Ok(Ensured::NoConfig);
    };
    if has_entry(&conf, entry) {
        return Ok(Ensured::InPlace(path));
    }
    let is_list = plugins(&conf).is_some();
    let ownership = Ownership::of(&path)?;
    let updated = with_entry(conf, entry.clone())
        .ok_or_else(|| ConflistError::Shape { path: path.clone() })?;
    let is_conflist = path.extension().is_some_and(|e| e == "conflist");
    if is_list || is_conflist {
        files::write_atomic(&path, &render(&updated), ownership)?;
        return Ok(Ensured::Written {
            path,
            converted_from: None,
        });
    }
    let target = path.with_extension("conflist");
    files::write_atomic(&target, &render(&updated), ownership)?;
    files::remove_if_present(&path)?;
    Ok(Ensured::Written {
        path: target,
        converted_from: Some(path),
    })
}

/// Whether the primary configuration of `dir` holds `entry`: `Ok(path)` when
/// it does, `Err(what is missing)` otherwise.
pub fn check(dir: &Path, entry: &Value) -> Result<PathBuf, String> {
    let path = primary(dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no CNI configuration in {} yet", dir.display()))?;
    let conf = read_json(&path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} disappeared while being read", path.display()))?;
    if has_entry(&conf, entry) {
        Ok(path)
    } else {
        Err(format!(
            "the primary CNI configuration {} has no {CNI_BINARY} entry",
            path.display()
        ))
    }
}

/// Removes every entry of the plugin's type from every configuration in
/// `dir` (not only the primary one: a file that stopped being primary may
/// still hold one). Returns the files changed. A file that is not JSON is
/// skipped unless it names the plugin, which is an error: the binary must
/// then stay.
pub fn remove_all(dir: &Path) -> Result<Vec<PathBuf>, ConflistError> {
    let mut changed = Vec::new();
    for path in config_files(dir)? {
        let conf = match read_json(&path) {
            Ok(Some(conf)) => conf,
            Ok(None) => continue,
            Err(e @ ConflistError::Json { .. }) => {
                let text = files::read_if_present(&path)?.unwrap_or_default();
                if String::from_utf8_lossy(&text).contains(CNI_BINARY) {
                    return Err(e);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let (conf, removed) = without_entry(conf);
        if removed {
            files::write_atomic(&path, &render(&conf), Ownership::of(&path)?)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        entry(Path::new("/etc/cni/net.d/kube-mtls-cni.kubeconfig"))
    }

    fn bridge_portmap() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "kind",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    fn types(conf: &Value) -> Vec<&str> {
        plugins(conf)
            .expect("a list")
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    #[test]
    fn the_entry_asks_for_pod_annotations() {
        let e = ours();
        assert_eq!(e["type"], "kube-mtls-cni");
        assert_eq!(e["kubeconfig"], "/etc/cni/net.d/kube-mtls-cni.kubeconfig");
        assert_eq!(e["capabilities"]["io.kubernetes.cri.pod-annotations"], true);
    }

    #[test]
    fn appended_last_and_nothing_else_changes() {
        let conf = with_entry(bridge_portmap(), ours()).expect("a list");
        assert_eq!(types(&conf), ["bridge", "portmap", "kube-mtls-cni"]);
        let (back, removed) = without_entry(conf.clone());
        assert!(removed);
        assert_eq!(back, bridge_portmap());
        assert!(has_entry(&conf, &ours()));
        assert!(!has_entry(&bridge_portmap(), &ours()));
    }

    #[test]
    fn inserting_twice_leaves_one_entry() {
        let once = with_entry(bridge_portmap(), ours()).expect("a list");
        let twice = with_entry(once.clone(), ours()).expect("a list");
        assert_eq!(once, twice);
        assert_eq!(types(&twice), ["bridge", "portmap", "kube-mtls-cni"]);
    }

    #[test]
    fn a_stale_or_duplicated_entry_is_replaced() {
        let mut conf = bridge_portmap();
        let stale = json!({"type": "kube-mtls-cni", "kubeconfig": "/old/path"});
        if let Some(Value::Array(p)) = conf.get_mut("plugins") {
            p.insert(0, stale.clone());
            p.push(stale);
        }
        assert!(has_any_entry(&conf));
        assert!(!has_entry(&conf, &ours()));
        let fixed = with_entry(conf, ours()).expect("a list");
        assert_eq!(types(&fixed), ["bridge", "portmap", "kube-mtls-cni"]);
        assert!(has_entry(&fixed, &ours()));
    }

    #[test]
    fn a_single_plugin_becomes_a_list() {
        let single = json!({
            "cniVersion": "0.4.0",
            "name": "mynet",
            "type": "bridge",
            "bridge": "cni0",
            "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}
        });
        let list = with_entry(single, ours()).expect("a list");
        assert_eq!(
            list,
            json!({
                "cniVersion": "0.4.0",
                "name": "mynet",
                "plugins": [
                    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
                    ours()
                ]
            })
        );
    }

    #[test]
    fn neither_list_nor_plugin_is_refused() {
        assert_eq!(with_entry(json!({"name": "x"}), ours()), None);
        assert_eq!(with_entry(json!([1, 2]), ours()), None);
    }

    #[test]
    fn removing_from_a_file_without_an_entry_changes_nothing() {
        let (conf, removed) = without_entry(bridge_portmap());
        assert!(!removed);
        assert_eq!(conf, bridge_portmap());
    }
}
