//! The repair controller: pods that started on this node before the plugin
//! was installed there.
//!
//! In CNI mode a pod's first init container (`kube-mtls-validate`) checks that
//! its traffic is redirected and exits 97 when it is not: the pod's network
//! was set up without the plugin (a new or rebooted node, where the pod won
//! the race against this agent). The controller watches the pods scheduled on
//! its own node and, for each such failure:
//! - `reinstall`: finds the pod's network namespace ([`super::netns`]) and runs
//!   this binary's `repair-netns` in a child process, which applies the pod's
//!   rules there (the plugin's own code); the kubelet restarts the init
//!   container, which then passes;
//! - `delete`: deletes the pod once the plugin is in place here, so that the
//!   new pod its controller makes is set up by the plugin.
//!
//! Each repair is an Event on the pod (`Repaired` or `RepairFailed`) and a
//! count in `kube_mtls_cni_repairs_total`. A failed run of the init container
//! (one container ID) is repaired once; the kubelet's restart back-off paces
//! any further attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kube_mtls_contract::names::{CNI_BINARY, CNI_REDIRECT, VALIDATE_NAME, VALIDATION_FAILED_EXIT};

use super::metrics::Metrics;
use super::settings::RepairMode;

/// How long the child that applies a pod's rules may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a pod waiting for the plugin (delete mode) is looked at again.
const WAIT_FOR_PLUGIN: Duration = Duration::from_secs(2);
/// Failures remembered before the memory is cleared (pods come and go).
const REMEMBERED: usize = 4096;

/// A failed validation of a pod: the redirect rules were missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The failed run: its container ID (or restart count when it has none).
    pub run: String,
    /// The pod's `kube-mtls-init` arguments, a JSON list of strings.
    pub init_args: String,
}

/// The validation failure a pod shows now, if any: it carries the CNI
/// annotation, is not being deleted, and its `kube-mtls-validate` init
/// container last ended with exit code 97 and is not running again yet.
pub fn failed_validation(pod: &Pod) -> Option<Failure> {
    let init_args = pod.annotations().get(CNI_REDIRECT)?.clone();
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == VALIDATE_NAME)?;
    let state = status.state.as_ref()?;
    let failed = |t: &ContainerStateTerminated| t.exit_code == VALIDATION_FAILED_EXIT;
    let run = match (&state.terminated, &state.waiting) {
        (Some(t), _) if failed(t) => t,
        (None, Some(_)) => status
            .last_state
            .as_ref()?
            .terminated
            .as_ref()
            .filter(|t| failed(t))?,
        _ => return None,
    };
    let run = run
        .container_id
        .clone()
        .unwrap_or_else(|| format!("restart-{}", status.restart_count));
    Some(Failure { run, init_args })
}

/// What repairing needs.
pub struct Context {
    pub client: Client,
    pub mode: RepairMode,
    pub node: String,
    /// This binary, run as `repair-netns`.
    pub exe: PathBuf,
    /// Where processes are listed (`/proc`, the host's with hostPID).
    pub proc_root: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Set while the plugin's entry is in the primary configuration.
    pub installed: Arc<AtomicBool>,
    recorder: Recorder,
    /// The last failed run repaired, per pod UID.
    done: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(
        client: Client,
        mode: RepairMode,
        node: String,
        exe: PathBuf,
        metrics: Arc<Metrics>,
        installed: Arc<AtomicBool>,
    ) -> Self {
        let reporter = Reporter {
            controller: CNI_BINARY.into(),
            instance: Some(node.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            mode,
            node,
            exe,
            proc_root: PathBuf::from("/proc"),
            metrics,
            installed,
            done: Mutex::new(HashMap::new()),
        }
    }

    /// Records `run` of the pod `uid` as handled; false when it already was.
    fn first_time(&self, uid: &str, run: &str) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.get(uid).is_some_and(|r| r == run) {
            return false;
        }
        if done.len() >= REMEMBERED {
            done.clear();
        }
        done.insert(uid.to_owned(), run.to_owned());
        true
    }

    fn forget(&self, uid: &str) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.remove(uid);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, RepairError> {
    let uid = pod.uid().unwrap_or_default();
    let Some(failure) = failed_validation(&pod) else {
        ctx.forget(&uid);
        return Ok(Action::await_change());
    };
    if ctx.mode == RepairMode::Delete && !ctx.installed.load(Ordering::Relaxed) {
        // A new pod made now would meet the same missing plugin.
        return Ok(Action::requeue(WAIT_FOR_PLUGIN));
    }
    if !ctx.first_time(&uid, &failure.run) {
        return Ok(Action::await_change());
    }
    let outcome = match ctx.mode {
        RepairMode::Reinstall => reinstall(&pod, &failure, &ctx).await,
        RepairMode::Delete => delete(&pod, &ctx).await,
        RepairMode::Off => return Ok(Action::await_change()),
    };
    let action = ctx.mode.as_str();
    ctx.metrics.repaired(action, outcome.is_ok());
    let (type_, reason, note) = match &outcome {
        Ok(done) => (EventType::Normal, "Repaired", done.clone()),
        Err(why) => (EventType::Warning, "RepairFailed", why.clone()),
    };
    let note = format!(
        "{note} (its init container {VALIDATE_NAME} exited {VALIDATION_FAILED_EXIT}: the pod's network was set up on node {} before {CNI_BINARY} was installed there)",
        ctx.node
    );
    match &outcome {
        Ok(_) => tracing::info!(pod = %pod_name(&pod), action, "{note}"),
        Err(_) => tracing::warn!(pod = %pod_name(&pod), action, "{note}"),
    }
    publish(&ctx, &pod, type_, reason, &note).await;
    Ok(Action::await_change())
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

async fn publish(ctx: &Context, pod: &Pod, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Repair".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::warn!(error = %e, pod = %pod_name(pod), "repair event not published");
    }
}

/// Applies the pod's rules in its running network namespace.
async fn reinstall(pod: &Pod, failure: &Failure, ctx: &Context) -> Result<String, String> {
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
        return Err("Not repaired: the pod has failed and will not run its init container again (restartPolicy Never); delete it, or run the agent with --repair delete".into());
    }
    let ip: IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or("Not repaired: the pod has no IP address yet")?;
    let root = ctx.proc_root.clone();
    let netns = tokio::task::spawn_blocking(move || super::netns::find(&root, ip))
        .await
        .map_err(|e| format!("Not repaired: the namespace search stopped: {e}"))?
        .map_err(|e| format!("Not repaired: cannot list processes in {}: {e}", ctx.proc_root.display()))?
        .ok_or_else(|| format!("Not repaired: no network namespace on this node has the pod's address {ip} (is the agent running with hostPID?)"))?;
    run_child(&ctx.exe, &netns, &failure.init_args)
        .await
        .map_err(|e| {
            format!(
                "Not repaired: applying the rules in {} failed: {e}",
                netns.display()
            )
        })?;
    Ok(format!(
        "Installed the pod's redirect rules in its network namespace ({}); the kubelet restarts {VALIDATE_NAME}, which now passes",
        netns.display()
    ))
}

/// Runs `<exe> repair-netns --netns <netns> --args <args>`.
async fn run_child(exe: &Path, netns: &Path, args: &str) -> Result<(), String> {
    let child = tokio::process::Command::new(exe)
        .arg("--log-level=error")
        .arg("repair-netns")
        .arg(format!("--netns={}", netns.display()))
        .arg(format!("--args={args}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHILD_TIMEOUT, child)
        .await
        .map_err(|_| format!("no answer within {}s", CHILD_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("{} ({})", last.trim(), out.status))
}

/// Deletes the pod, for its controller to make a new one.
async fn delete(pod: &Pod, ctx: &Context) -> Result<String, String> {
    let ns = pod.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        preconditions: pod.uid().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => {
            Ok("Deleted the pod; its controller makes a new one, which the plugin sets up".into())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok("The pod was already gone".into()),
        Err(e) => Err(format!("Not repaired: cannot delete the pod: {e}")),
    }
}

fn error_policy(pod: Arc<Pod>, err: &RepairError, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, pod = %pod_name(&pod), "repair failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Watches the pods of `ctx.node` and repairs them until the stream ends.
pub async fn run(ctx: Context) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.node);
    tracing::info!(node = %ctx.node, mode = ctx.mode.as_str(), "repair controller watching this node's pods");
    Controller::new(pods, watcher::Config::default().fields(&selector))
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "repair controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(annotated: bool, validate: Value) -> Pod {
        let annotations = if annotated {
            json!({"kube-mtls.io/cni-redirect": "[\"--proxy-uid\",\"15337\"]"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "annotations": annotations},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "podIP": "10.244.1.7", "initContainerStatuses": [validate]}
        }))
        .expect("a pod")
    }

    fn status(state: Value, last: Value, restarts: i32) -> Value {
        json!({
            "name": "kube-mtls-validate", "image": "i", "imageID": "", "ready": false,
            "restartCount": restarts, "state": state, "lastState": last
        })
    }

    fn terminated(code: i32, id: &str) -> Value {
        json!({"terminated": {"exitCode": code, "containerID": id}})
    }

    #[test]
    fn a_run_that_exited_97_is_a_failure() {
        let p = pod(true, status(terminated(97, "containerd://a"), json!({}), 0));
        let f = failed_validation(&p).expect("a failure");
        assert_eq!(f.run, "containerd://a");
        assert_eq!(f.init_args, "[\"--proxy-uid\",\"15337\"]");
    }

    #[test]
    fn waiting_after_a_97_is_the_same_failure() {
        let waiting = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let p = pod(true, status(waiting, terminated(97, "containerd://a"), 1));
        assert_eq!(
            failed_validation(&p).map(|f| f.run),
            Some("containerd://a".into())
        );
    }

    #[test]
    fn not_a_failure() {
        let running = json!({"running": {}});
        // Running again (after a repair), passed, another exit code, no annotation.
        for p in [
            pod(true, status(running, terminated(97, "containerd://a"), 1)),
            pod(
                true,
                status(
                    terminated(0, "containerd://b"),
                    terminated(97, "containerd://a"),
                    1,
                ),
            ),
            pod(true, status(terminated(1, "containerd://a"), json!({}), 0)),
            pod(
                false,
                status(terminated(97, "containerd://a"), json!({}), 0),
            ),
        ] {
            assert_eq!(failed_validation(&p), None, "{:?}", p.status);
        }
    }

    #[test]
    fn a_pod_being_deleted_is_left_alone() {
        let mut p = pod(true, status(terminated(97, "containerd://a"), json!({}), 0));
        p.metadata.deletion_timestamp = serde_json::from_value(json!("2025-01-01T00:00:00Z")).ok();
        assert!(p.metadata.deletion_timestamp.is_some());
        assert_eq!(failed_validation(&p), None);
    }
}
