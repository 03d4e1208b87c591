//! Installing the plugin on the node, keeping it installed, and removing it.
//!
//! Order matters both ways. Installing: the binary, then the kubeconfig, then
//! the conflist entry, so the runtime never finds an entry whose binary or
//! credentials are missing. Removing: the entry first (from every
//! configuration file), then the binary, then the kubeconfig; when the entry
//! cannot be removed the binary stays, because an entry without its binary
//! makes every new pod on the node fail.
//!
//! [`Installer::sync`] runs every `--sync-interval`: it puts back whatever
//! another agent removed (the conflist entry, most often: network plugins
//! rewrite their configuration on restart) and counts each re-insertion.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube_mtls_contract::names::CNI_BINARY;
use serde_json::Value;

use super::conflist::{self, ConflistError, Ensured};
use super::files::{self, FileError, Ownership};
use super::kubeconfig::{self, Kubeconfig, KubeconfigError};
use super::metrics::Metrics;
use super::settings::DirArgs;

/// A plugin binary is executable by everyone, like the others in the directory.
const BINARY_MODE: u32 = 0o755;

/// The plugin cannot be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "cannot install the plugin binary in {dir} (--cni-bin-dir, KUBE_MTLS_CNI_BIN_DIR): {source}. Fix: point it at the directory this node's container runtime loads CNI plugins from (chart value cni.binDir), mounted writable"
    )]
    Binary {
        dir: PathBuf,
        #[source]
        source: FileError,
    },
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("{0}; the plugin binary and kubeconfig are kept, since an entry may still name them")]
    Entry(#[source] ConflistError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// The installed plugin's paths.
pub fn binary_path(dirs: &DirArgs) -> PathBuf {
    dirs.cni_bin_dir.join(CNI_BINARY)
}

/// The entry the agent writes for `dirs`.
pub fn entry_for(dirs: &DirArgs) -> Value {
    conflist::entry(&dirs.cni_conf_dir.join(kubeconfig::FILE_NAME))
}

/// Whether the plugin is installed as the runtime needs it: `Ok` with the
/// configuration that names it, or what is missing.
pub fn ready(dirs: &DirArgs) -> Result<PathBuf, String> {
    let binary = binary_path(dirs);
    match std::fs::metadata(&binary) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => return Err(format!("{} is not an executable file", binary.display())),
        Err(e) => {
            return Err(format!(
                "the plugin binary {} is missing ({e})",
                binary.display()
            ));
        }
    }
    conflist::check(&dirs.cni_conf_dir, &entry_for(dirs))
}

/// The agent's installation on this node.
pub struct Installer {
    dirs: DirArgs,
    source: PathBuf,
    kubeconfig: Kubeconfig,
    entry: Value,
    metrics: Arc<Metrics>,
    /// Set while the entry is in the primary configuration.
    pub installed: Arc<AtomicBool>,
    /// Whether the entry was written once already: a later write is a re-insertion.
    inserted: bool,
    /// The last state logged, so a state that persists is logged once.
    last_note: String,
}

impl Installer {
    pub fn new(
        dirs: &DirArgs,
        source: PathBuf,
        server: String,
        account_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Self {
        Installer {
            kubeconfig: Kubeconfig::new(&dirs.cni_conf_dir, server, account_dir),
            entry: entry_for(dirs),
            dirs: dirs.clone(),
            source,
            metrics,
            installed: Arc::new(AtomicBool::new(false)),
            inserted: false,
            last_note: String::new(),
        }
    }

    /// Copies the plugin binary into the bin dir (always at start: an upgrade
    /// brings a new binary).
    pub fn install_binary(&self) -> Result<(), InstallError> {
        let target = binary_path(&self.dirs);
        files::copy_atomic(&self.source, &target, Ownership::mode(BINARY_MODE)).map_err(
            |source| InstallError::Binary {
                dir: self.dirs.cni_bin_dir.clone(),
                source,
            },
        )?;
        tracing::info!(path = %target.display(), "plugin binary installed");
        Ok(())
    }

    /// Copies the binary again when it is gone or differs in size from the source.
    fn keep_binary(&self) -> Result<(), InstallError> {
        let target = binary_path(&self.dirs);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        if size(&target).is_some() && size(&target) == size(&self.source) {
            return Ok(());
        }
        tracing::warn!(path = %target.display(), "plugin binary missing or changed; installing it again");
        self.install_binary()
    }

    /// One pass: binary, kubeconfig, entry; logs what changed.
    pub fn sync(&mut self) {
        let result = self.try_sync();
        let in_place = matches!(result, Ok(Ensured::InPlace(_) | Ensured::Written { .. }));
        self.installed.store(in_place, Ordering::Relaxed);
        self.metrics.entry_in_place.set(i64::from(in_place));
        match result {
            Ok(Ensured::Written {
                path,
                converted_from,
            }) => {
                let again = std::mem::replace(&mut self.inserted, true);
                if again {
                    self.metrics.reinsertions.inc();
                    tracing::warn!(path = %path.display(), "the CNI configuration was rewritten without the kube-mtls-cni entry; entry put back");
                } else {
                    tracing::info!(path = %path.display(), converted_from = ?converted_from, "kube-mtls-cni entry added to the primary CNI configuration");
                }
                self.note(format!("in place in {}", path.display()));
            }
            Ok(Ensured::InPlace(path)) => {
                self.inserted = true;
                self.note(format!("in place in {}", path.display()));
            }
            Ok(Ensured::NoConfig) => self.note(format!(
                "waiting for the node's network plugin to write a CNI configuration in {}",
                self.dirs.cni_conf_dir.display()
            )),
            Err(e) => self.note(format!("not installed: {e}")),
        }
    }

    fn try_sync(&self) -> Result<Ensured, InstallError> {
        self.keep_binary()?;
        if self.kubeconfig.sync()? {
            tracing::info!(path = %self.kubeconfig.path.display(), "plugin kubeconfig written");
        }
        conflist::ensure(&self.dirs.cni_conf_dir, &self.entry).map_err(InstallError::Entry)
    }

    fn note(&mut self, note: String) {
        if note != self.last_note {
            if note.starts_with("not installed") {
                tracing::warn!("{note}");
            } else {
                tracing::info!("{note}");
            }
            self.last_note = note;
        }
    }

    /// Removes the entry from every configuration, then the binary, then the kubeconfig.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        self.installed.store(false, Ordering::Relaxed);
        self.metrics.entry_in_place.set(0);
        let changed = conflist::remove_all(&self.dirs.cni_conf_dir).map_err(InstallError::Entry)?;
        for path in changed {
            tracing::info!(path = %path.display(), "kube-mtls-cni entry removed");
        }
        if files::remove_if_present(&binary_path(&self.dirs))? {
            tracing::info!("plugin binary removed");
        }
        if files::remove_if_present(&self.kubeconfig.path)? {
            tracing::info!("plugin kubeconfig removed");
        }
        Ok(())
    }
}
