//! The private extension module `virt_rbd_backup._native`: the only place that knows Python.
//!
//! It does three things and nothing else:
//! - **conversion**: options come in as a JSON string or a mapping (dumped with Python's `json`
//!   and read by serde, so `BackupOptions`' `deny_unknown_fields` reports a misspelt option);
//!   reports, listings and events go out as serde's JSON read back by `json.loads`, so the
//!   Python side sees exactly the documented JSON shape, fields in struct order;
//! - **GIL release and Ctrl-C**: a run happens on its own thread while the calling thread waits
//!   detached from the interpreter, attaching every [`POLL`] to let Python run its signal
//!   handlers. What an exception from a handler (KeyboardInterrupt) does depends on what the
//!   run holds ([`OnInterrupt`]): a backup or a restore (also `restore --define`) is cancelled
//!   through its [`CancelToken`] and the call keeps waiting until the engine has cleaned up
//!   (thawed the guests and removed its snapshots, removed a partial restore); a prune, which
//!   has no cancellation point, is waited for; a read-only call (listings, verify, also
//!   against the source snapshots) raises at once;
//! - **exception mapping**: [`Error`] becomes one exception of the hierarchy rooted at
//!   `BackupError`, once, here.
//!
//! Secrets: the one function that hands a Ceph key to Python (`ceph_key`, for the original
//! tool's scripting API when a script asks for the key outright) returns it as a plain `str`;
//! every other value that crosses this boundary is built from serde JSON, which a
//! `SecretString` cannot enter. `CephSession` (the original's `CephConnection`) takes a key
//! from Python only when the script already holds it; otherwise it reads it from libvirt itself.
//!
//! Events reach the Python callback from the engine's worker threads, which attach to the
//! interpreter for the call. A callback that raises is logged and the run goes on: a broken
//! progress display must not cost a backup.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use log::LevelFilter;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use base64::Engine as _;

use crate::block_repo::BlockRepoError;
use crate::ceph::{CephTimeouts, ClusterAddress};
use crate::engine::compat_session::{self, CephSession};
use crate::engine::restic::{self, ResticTarget};
use crate::engine::{
    self, BackupEvent, BackupOptions, CancelToken, CephAccess, DefineOptions, EventSink,
    RestoreOptions, RestoreTarget,
};
use crate::error::Error;
use crate::libvirt::HypervisorConnection;
use crate::plan::retention::KeepOptions;
use crate::secret::SecretString;

/// How often a waiting call attaches to the interpreter to run signal handlers.
const POLL: Duration = Duration::from_millis(100);

/// The Python logger the crate's records go to (Rust targets `virt_rbd_backup::x` become
/// `virt_rbd_backup.x`, children of this one).
const LOGGER: &str = "virt_rbd_backup";

create_exception!(
    virt_rbd_backup,
    BackupError,
    PyException,
    "Base class of every error raised by virt_rbd_backup."
);
create_exception!(
    virt_rbd_backup,
    UsageError,
    BackupError,
    "Options that make no sense (an unknown option, a bad value); exit status 2."
);
create_exception!(
    virt_rbd_backup,
    LibvirtError,
    BackupError,
    "libvirt could not be used: connection, domain lookup, secret or freeze."
);
create_exception!(
    virt_rbd_backup,
    CephError,
    BackupError,
    "A librados/librbd call failed."
);
create_exception!(
    virt_rbd_backup,
    RepositoryError,
    BackupError,
    "The backup repository could not be read or written."
);
create_exception!(
    virt_rbd_backup,
    ResticError,
    BackupError,
    "restic could not be run, or exited with an error (its own message is quoted), or a restic snapshot cannot be trusted as a disk (no seal, or its size or checksum differ)."
);
create_exception!(
    virt_rbd_backup,
    InconsistentError,
    BackupError,
    "The snapshots cannot be trusted to be consistent (the guest stayed frozen too long)."
);
create_exception!(
    virt_rbd_backup,
    CancelledError,
    BackupError,
    "The run was cancelled before it finished."
);

/// Resets pyo3-log's cache of Python loggers and levels, so that logging configured after the
/// import (as the CLI does) is honoured.
static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// The message of an error with the causes its `Display` does not already show.
fn error_message(err: &Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The one conversion of a crate error into a Python exception.
fn to_py_err(err: Error) -> PyErr {
    let message = error_message(&err);
    // Exhaustive on purpose: a new variant must be given its exception here, not fall on the
    // base class unnoticed.
    match err {
        Error::Usage(_)
        | Error::Target(_)
        | Error::NotInRepository(_)
        | Error::DiskNotChosen { .. }
        | Error::NoRbdDiskInSavedXml { .. }
        | Error::BadDomainName { .. }
        | Error::DomainExists { .. }
        | Error::NoResticSnapshot { .. }
        | Error::ResticDiskNotChosen { .. }
        | Error::NoBackupsOfDomain { .. }
        | Error::HostPassthrough { .. }
        | Error::Nbd(_)
        | Error::OptionOutOfRange { .. }
        | Error::NoBackupTarget
        | Error::NoSuchBackup { .. } => UsageError::new_err(message),
        Error::Libvirt(_) | Error::DomainStoppedWhileFrozen { .. } => {
            LibvirtError::new_err(message)
        }
        Error::Ceph(_) | Error::ClusterLockLost { .. } => CephError::new_err(message),
        // What was asked for is not there, or the options do not fit the repository: as the
        // folder layout's lookups, a usage error; the rest is the repository's.
        Error::BlockRepo(
            BlockRepoError::NoBackupsOfDomain { .. }
            | BlockRepoError::AmbiguousDomain { .. }
            | BlockRepoError::NoSuchBackup { .. }
            | BlockRepoError::NoSuchDisk { .. }
            | BlockRepoError::LayoutMismatch { .. }
            | BlockRepoError::KeyFile { .. }
            | BlockRepoError::KeyNeeded { .. }
            | BlockRepoError::NotEncrypted { .. }
            | BlockRepoError::Rekey { .. },
        ) => UsageError::new_err(message),
        Error::Repo(_) | Error::BlockRepo(_) => RepositoryError::new_err(message),
        Error::Restic(_) | Error::ResticUntrusted { .. } | Error::ResticSizeMismatch { .. } => {
            ResticError::new_err(message)
        }
        Error::Inconsistent(_) | Error::SnapshotRemoved { .. } => {
            InconsistentError::new_err(message)
        }
        Error::Cancelled => CancelledError::new_err(message),
        // Not failures of a call: a skipped domain is reported, never raised; the freeze
        // records are the host's, not a repository's or the cluster's.
        Error::Skipped(_) | Error::FreezeLedger { .. } => BackupError::new_err(message),
        // Its causes span libvirt, Ceph and the backup's data; the message says which.
        Error::LiveRestore { .. } => BackupError::new_err(message),
    }
}

/// Builds the Python value of a serializable value: its JSON read by Python's `json.loads`, so
/// dicts keep the field order of the Rust structs (as in the `--json` report).
fn to_py<'py, T: serde::Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| {
        BackupError::new_err(format!("internal error: cannot serialize a result: {e}"))
    })?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The JSON value of an options argument: a JSON string as is, anything else dumped by Python's
/// `json` (so a mapping, or a value `json` cannot dump, fails the same way as in the CLI).
fn options_json(
    py: Python<'_>,
    options: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<serde_json::Value> {
    let text: String = if let Ok(s) = options.cast::<PyString>() {
        s.to_str()?.to_owned()
    } else {
        py.import("json")?
            .call_method1("dumps", (options,))?
            .extract()?
    };
    serde_json::from_str(&text).map_err(|e| UsageError::new_err(format!("invalid {what}: {e}")))
}

/// Reads backup options from a JSON string or a mapping; a bad option is a `UsageError`.
fn parse_options(py: Python<'_>, options: &Bound<'_, PyAny>) -> PyResult<BackupOptions> {
    let value = options_json(py, options, "backup options")?;
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid backup options: {e}")))
}

/// Reads restore options from a JSON string or a mapping. `to` is either the tagged object of
/// `RestoreTarget` or a string in the CLI syntax (`rbd:POOL/IMAGE`, `rbd:POOL/NS/IMAGE`, a file
/// path), read by `RestoreTarget`'s `FromStr` so the syntax has one definition; a bad target
/// or option is a `UsageError`.
fn parse_restore_options(py: Python<'_>, options: &Bound<'_, PyAny>) -> PyResult<RestoreOptions> {
    let mut value = options_json(py, options, "restore options")?;
    if let Some(to) = value.get_mut("to") {
        if let Some(text) = to.as_str() {
            let target: RestoreTarget =
                text.parse().map_err(|e: engine::restore::TargetError| {
                    UsageError::new_err(format!("invalid restore target: {e}"))
                })?;
            *to = serde_json::to_value(&target).map_err(|e| {
                BackupError::new_err(format!("internal error: cannot serialize a target: {e}"))
            })?;
        }
    }
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid restore options: {e}")))
}

/// Reads the options of `restore --define` from a JSON string or a mapping with the fields of
/// `DefineOptions`; a missing required or unknown field is a `UsageError`.
fn parse_define_options(py: Python<'_>, options: &Bound<'_, PyAny>) -> PyResult<DefineOptions> {
    let value = options_json(py, options, "define options")?;
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid define options: {e}")))
}

/// Reads how verify reaches the cluster (`connect`, `ceph_conf`, `ceph_user`) from a JSON
/// string or a mapping; an unknown field is a `UsageError`.
fn parse_source_options(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<CephAccess> {
    let value = options_json(py, source, "source options")?;
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid source options: {e}")))
}

/// Reads how to open a repository (`RepoAccess`: `layout`, `key_file`, `s3_endpoint`,
/// `s3_region`, `s3_credentials`, `s3_ca_file`) from a JSON string or a mapping; `None` is the
/// default (a folder repository, or a plain block repository on a folder).
fn parse_repo_access(
    py: Python<'_>,
    access: Option<&Bound<'_, PyAny>>,
) -> PyResult<engine::repo_access::RepoAccess> {
    let Some(access) = access else {
        return Ok(engine::repo_access::RepoAccess::default());
    };
    let value = options_json(py, access, "repository access")?;
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid repository access options: {e}")))
}

/// Reads a restic target (`repository`, `password_file`, `binary`) from a JSON string or a
/// mapping; a bad or unknown field is a `UsageError`.
fn parse_restic_target(py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<ResticTarget> {
    let value = options_json(py, target, "restic target")?;
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid restic target: {e}")))
}

/// Reads keep options from a JSON string or a mapping with the fields of `KeepOptions`
/// (`last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`, `within_seconds`); missing
/// fields keep nothing. `KeepOptions` itself ignores unknown fields, so they are refused here
/// against the fields it serializes: a misspelt `dayly` must not silently keep nothing.
fn parse_keep_options(py: Python<'_>, keep: &Bound<'_, PyAny>) -> PyResult<KeepOptions> {
    let value = options_json(py, keep, "keep options")?;
    let known = serde_json::to_value(KeepOptions::default()).map_err(|e| {
        BackupError::new_err(format!(
            "internal error: cannot serialize keep options: {e}"
        ))
    })?;
    let (Some(given), Some(known)) = (value.as_object(), known.as_object()) else {
        return Err(UsageError::new_err(
            "invalid keep options: expected an object such as {\"daily\": 7}",
        ));
    };
    if let Some(unknown) = given.keys().find(|k| !known.contains_key(k.as_str())) {
        let expected: Vec<String> = known.keys().map(|k| format!("`{k}`")).collect();
        return Err(UsageError::new_err(format!(
            "invalid keep options: unknown field `{unknown}`, expected one of {}",
            expected.join(", ")
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| UsageError::new_err(format!("invalid keep options: {e}")))
}

/// Hands events to a Python callable, attaching from whichever thread emits them.
struct PyEventSink {
    callback: Option<Py<PyAny>>,
}

impl EventSink for PyEventSink {
    fn emit(&self, event: &BackupEvent) {
        let Some(callback) = &self.callback else {
            return;
        };
        // `try_attach`: during interpreter shutdown events are dropped instead of panicking.
        Python::try_attach(|py| {
            let outcome = to_py(py, event).and_then(|ev| callback.call1(py, (ev,)));
            if let Err(err) = outcome {
                report_callback_error(py, err);
            }
        });
    }
}

/// Logs an exception raised by the event callback on the package logger, with its traceback.
fn report_callback_error(py: Python<'_>, err: PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", (LOGGER,))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        logger.call_method(
            "error",
            ("the on_event callback raised an exception; the backup goes on",),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if logged.is_err() {
        err.write_unraisable(py, None);
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// What a call does when a signal handler raises (Ctrl-C) while the engine works.
#[derive(Clone, Copy)]
enum OnInterrupt<'a> {
    /// Raise at once and leave the work to finish on its own thread: it only reads, so there
    /// is nothing to clean up or to leave half done.
    Abandon,
    /// Cancel the work through its token, wait until it has returned (its clean-up done), then
    /// raise. The text names the clean-up waited for, for the log.
    Cancel(&'a CancelToken, &'static str),
    /// The work has no cancellation point: wait until it has finished, then raise. The text
    /// names the work waited for, for the log.
    Finish(&'static str),
}

/// Runs `work` on its own thread and waits for it detached from the interpreter, running
/// Python's signal handlers every [`POLL`]; an exception from a handler is handled as
/// `on_interrupt` says. Once the wait is over, that exception is raised instead of the result.
fn run_interruptible<T, F>(py: Python<'_>, on_interrupt: OnInterrupt<'_>, work: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let worker = thread::Builder::new()
        .name("virt-rbd-backup".into())
        .spawn(move || {
            // The receiver is gone only if the caller stopped waiting; nothing to tell then.
            let _ = sender.send(work());
        })
        .map_err(|e| BackupError::new_err(format!("cannot start a thread: {e}")))?;

    let mut interruption: Option<PyErr> = None;
    loop {
        match py.detach(|| receiver.recv_timeout(POLL)) {
            Ok(result) => {
                // The thread has sent its last value; joining only reaps it.
                let _ = py.detach(|| worker.join());
                return match interruption {
                    Some(err) => Err(err),
                    None => Ok(result),
                };
            }
            Err(RecvTimeoutError::Disconnected) => {
                let message = match py.detach(|| worker.join()) {
                    Err(payload) => panic_message(payload.as_ref()),
                    Ok(()) => "the worker thread ended without a result".to_owned(),
                };
                return Err(interruption.unwrap_or_else(|| {
                    BackupError::new_err(format!("internal error: {message}"))
                }));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(err) = py.check_signals() {
                    let waiting_for = match on_interrupt {
                        OnInterrupt::Abandon => return Err(err),
                        OnInterrupt::Cancel(_, what) | OnInterrupt::Finish(what) => what,
                    };
                    if interruption.is_some() {
                        log::warn!(
                            target: LOGGER,
                            "still waiting for {waiting_for}; stopping now would leave it half done"
                        );
                        continue;
                    }
                    if let OnInterrupt::Cancel(token, _) = on_interrupt {
                        token.cancel();
                        log::warn!(
                            target: LOGGER,
                            "interrupted: cancelling; waiting for {waiting_for} to finish"
                        );
                    } else {
                        log::warn!(
                            target: LOGGER,
                            "interrupted: waiting for {waiting_for} to finish (it cannot stop half-way)"
                        );
                    }
                    interruption = Some(err);
                }
            }
        }
    }
}

/// Picks up changes to Python's logging configuration made since the last call.
fn refresh_logging() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
}

/// Backs up domains; see `virt_rbd_backup.backup` for the friendly face.
///
/// `options` is a JSON object (str) or a mapping with the fields of `BackupOptions`;
/// `on_event` is called with each event as a dict, from worker threads. Returns the report as
/// a dict. Per-domain failures are in the report; an exception means the run could not start.
#[pyfunction]
#[pyo3(signature = (options, on_event=None))]
fn backup<'py>(
    py: Python<'py>,
    options: &Bound<'py, PyAny>,
    on_event: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_options(py, options)?;
    refresh_logging();
    let sink = PyEventSink { callback: on_event };
    let cancel = CancelToken::new();
    let token = cancel.clone();
    let on_interrupt = OnInterrupt::Cancel(&cancel, "clean-up (thaw, snapshot removal)");
    let (result, sink) = run_interruptible(py, on_interrupt, move || {
        let result = engine::run_backup(&options, &sink, &token);
        // The sink goes back to the caller so its callback is released while attached.
        (result, sink)
    })?;
    drop(sink);
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Plans a backup with `options` (the fields of `BackupOptions`) without changing anything:
/// per domain, the disks, full or incremental and why, the bytes it would read. Returns the
/// plan as a dict.
#[pyfunction]
#[pyo3(signature = (options))]
fn plan<'py>(py: Python<'py>, options: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_options(py, options)?;
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::plan_backup(&options)
    })?;
    let plan = result.map_err(to_py_err)?;
    to_py(py, &plan)
}

/// Lists this tool's disk backups in a restic repository (oldest first), as a list of dicts;
/// `domain` (name or UUID) keeps only that domain's.
#[pyfunction]
#[pyo3(signature = (target, domain=None))]
fn list_restic<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    domain: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let target = parse_restic_target(py, target)?;
    refresh_logging();
    // Read-only: on Ctrl-C the call raises at once; the restic process ends with us.
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        restic::list_restic(&target, domain.as_deref())
    })?;
    let snapshots = result.map_err(to_py_err)?;
    to_py(py, &snapshots)
}

/// Reads the Ceph key of a disk's `<auth>` from libvirt's secret (by UUID, else by usage name),
/// base64 as Ceph wants it. Only for callers that ask for the key outright.
#[pyfunction]
#[pyo3(signature = (connect, domain, username, secret_uuid=None, secret_usage=None))]
fn ceph_key(
    py: Python<'_>,
    connect: String,
    domain: String,
    username: String,
    secret_uuid: Option<String>,
    secret_usage: Option<String>,
) -> PyResult<String> {
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        let libvirt = HypervisorConnection::open(&connect)?;
        let key = libvirt.ceph_key(
            &domain,
            &username,
            secret_uuid.as_deref(),
            secret_usage.as_deref(),
        )?;
        Ok::<String, Error>(key.expose().to_owned())
    })?;
    result.map_err(to_py_err)
}

/// The name this tool gives the snapshot of a backup by `owner` (a repository id, or
/// `restic`) started at `unix_time` (seconds), so that Python never re-implements the rule.
#[pyfunction]
#[pyo3(signature = (owner, unix_time))]
fn snapshot_name(owner: &str, unix_time: f64) -> PyResult<String> {
    if !unix_time.is_finite() || unix_time < 0.0 {
        return Err(UsageError::new_err(format!(
            "not a time: {unix_time} (Unix seconds expected)"
        )));
    }
    let secs = unix_time.trunc();
    // Rounded: a float such as 1795686763.007 holds .00699..., which is 7 ms.
    let millis = ((unix_time - secs) * 1000.0).round().min(999.0) as u32;
    let backup_id = crate::plan::backup_id_from_unix(secs as i64, millis);
    Ok(crate::plan::snapshot_name(owner, &backup_id))
}

/// Reads a rate such as `200M`, `1.5G`, `512K` or `1048576` as bytes per second (binary units),
/// with the core's own parser, so that `--bwlimit` has one definition; a bad rate is a
/// `UsageError`.
#[pyfunction]
#[pyo3(signature = (text))]
fn parse_rate(text: &str) -> PyResult<u64> {
    crate::plan::parse_rate(text).map_err(UsageError::new_err)
}

/// Lists domains and what a backup would do with their disks, as a list of dicts.
#[pyfunction]
#[pyo3(signature = (connect, domains))]
fn list_domains<'py>(
    py: Python<'py>,
    connect: String,
    domains: Vec<String>,
) -> PyResult<Bound<'py, PyAny>> {
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::list_domains(&connect, &domains)
    })?;
    let listings = result.map_err(to_py_err)?;
    to_py(py, &listings)
}

/// The versions this module was built as and runs with: `virt_rbd_backup` (the crate),
/// `librbd`, `librados` and `libvirt` (the libraries loaded, which must match the host's Ceph
/// and libvirt), as a dict of str.
#[pyfunction]
fn library_versions(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let (rbd, rados) = crate::ceph::library_versions();
    let versions = serde_json::json!({
        "virt_rbd_backup": env!("CARGO_PKG_VERSION"),
        "librbd": rbd,
        "librados": rados,
        "libvirt": crate::libvirt::library_version().unwrap_or_else(|| "unknown".into()),
    });
    to_py(py, &versions)
}

/// Thaws guests left frozen by runs that died with their thaw watchdog (the unit's
/// `ExecStopPost=`); returns what was done per domain, as a list of dicts.
#[pyfunction]
#[pyo3(signature = ())]
fn thaw_orphans<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    refresh_logging();
    // A thaw must not be abandoned halfway: wait for it, as for a prune.
    let result = run_interruptible(
        py,
        OnInterrupt::Finish("the thaw of orphaned freezes"),
        engine::thaw_orphans,
    )?;
    let outcomes = result.map_err(to_py_err)?;
    to_py(py, &outcomes)
}

/// Lists the complete backups in a repository (oldest first per domain), as a list of dicts;
/// `domain` (name or UUID) keeps only that domain's.
///
/// `access` (a JSON object (str) or a mapping with the fields of `RepoAccess`) opens a block
/// repository: its layout, key file and S3 settings.
#[pyfunction]
#[pyo3(signature = (repo, domain=None, access=None))]
fn list_backups<'py>(
    py: Python<'py>,
    repo: PathBuf,
    domain: Option<String>,
    access: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::repo_access::list_backups_at(&repo.to_string_lossy(), &access, domain.as_deref())
    })?;
    let listings = result.map_err(to_py_err)?;
    to_py(py, &listings)
}

/// Restores one disk of a backup into a file or an RBD image; returns the report as a dict.
///
/// `options` is a JSON object (str) or a mapping with the fields of `RestoreOptions`; its `to`
/// may be a string in the CLI syntax. The result is checked against the backup's checksum; a
/// failure (or Ctrl-C) leaves no partial target behind.
#[pyfunction]
#[pyo3(signature = (options))]
fn restore<'py>(py: Python<'py>, options: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_restore_options(py, options)?;
    refresh_logging();
    let cancel = CancelToken::new();
    let token = cancel.clone();
    let on_interrupt = OnInterrupt::Cancel(&cancel, "the removal of the partial restore");
    let result = run_interruptible(py, on_interrupt, move || engine::restore(&options, &token))?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Restores every RBD disk of a backup into new images `POOL/NAME-TARGET` and defines a new
/// domain on them (new name, UUID and MACs; defined, not started); returns the report as a dict.
///
/// `options` is a JSON object (str) or a mapping with the fields of `DefineOptions`. On Ctrl-C
/// the restore of the current disk is cancelled and its partial image removed before the
/// exception is raised; no domain is defined then.
#[pyfunction]
#[pyo3(signature = (options))]
fn restore_define<'py>(
    py: Python<'py>,
    options: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_define_options(py, options)?;
    refresh_logging();
    let cancel = CancelToken::new();
    let token = cancel.clone();
    let on_interrupt = OnInterrupt::Cancel(&cancel, "the removal of the partial restore");
    let result = run_interruptible(py, on_interrupt, move || {
        engine::restore_define(&options, &token)
    })?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Restores a backup live under a new domain (`restore --define NAME --live`): the domain
/// boots at once on overlays of this process's NBD export of the backup while libvirt copies
/// it into new RBD images, then runs on them, defined persistently; returns the report as a
/// dict. `options` as for `restore_define` (`force` is refused). On Ctrl-C everything made is
/// undone (the transient domain destroyed, the new images removed, the servers stopped)
/// before the exception is raised.
#[pyfunction]
#[pyo3(signature = (options))]
fn restore_live<'py>(py: Python<'py>, options: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_define_options(py, options)?;
    refresh_logging();
    let cancel = CancelToken::new();
    let token = cancel.clone();
    let on_interrupt = OnInterrupt::Cancel(&cancel, "the undoing of the live restore");
    let result = run_interruptible(py, on_interrupt, move || {
        engine::live_restore::restore_live(&options, &token)
    })?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Verifies the backups in a repository (of one domain, or one backup and its chain); returns
/// the report as a dict. Damage is in the report's `problems`; an exception means the
/// verification could not run.
///
/// With `source` (a JSON object (str) or a mapping with the fields of `CephAccess`, possibly
/// empty), each domain's latest backup (or `backup`) is also compared with its snapshot still
/// in the cluster.
///
/// `access` opens a block repository (as for `list_backups`); `read_data` (0 to 1) is the
/// fraction of its blocks also read and checked, a random sample each run (a folder
/// repository's verify always reads every byte).
#[pyfunction]
#[pyo3(signature = (repo, domain=None, backup=None, source=None, access=None, read_data=0.0))]
fn verify<'py>(
    py: Python<'py>,
    repo: PathBuf,
    domain: Option<String>,
    backup: Option<String>,
    source: Option<&Bound<'py, PyAny>>,
    access: Option<&Bound<'py, PyAny>>,
    read_data: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let source = source.map(|s| parse_source_options(py, s)).transpose()?;
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    // Read-only, also against the cluster: on Ctrl-C the call raises at once.
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::repo_access::verify_at(
            &repo.to_string_lossy(),
            &access,
            domain.as_deref(),
            backup.as_deref(),
            source.as_ref(),
            read_data,
        )
    })?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Applies keep options to the backups of one domain or of all; returns the report as a dict.
///
/// `keep` is a JSON object (str) or a mapping with the fields of `KeepOptions`. With `dry_run`
/// nothing is removed.
///
/// `access` opens a block repository (as for `list_backups`); there the blocks no backup
/// names any more are swept too.
#[pyfunction]
#[pyo3(signature = (repo, keep, domain=None, dry_run=false, access=None))]
fn prune<'py>(
    py: Python<'py>,
    repo: PathBuf,
    keep: &Bound<'py, PyAny>,
    domain: Option<String>,
    dry_run: bool,
    access: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let keep = parse_keep_options(py, keep)?;
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    let on_interrupt = OnInterrupt::Finish("the prune (its removals under the domain locks)");
    let result = run_interruptible(py, on_interrupt, move || {
        engine::repo_access::prune_at(
            &repo.to_string_lossy(),
            &access,
            domain.as_deref(),
            &keep,
            dry_run,
        )
    })?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// Gives an encrypted block repository a new key file (created 0600 when missing) and, unless
/// `keep_old`, takes the current one's access away; returns the report as a dict. `access`
/// names the current key file (`key_file`) and the S3 settings, as for `list_backups`.
#[pyfunction]
#[pyo3(signature = (repo, new_key_file, access=None, keep_old=false))]
fn rekey<'py>(
    py: Python<'py>,
    repo: PathBuf,
    new_key_file: PathBuf,
    access: Option<&Bound<'py, PyAny>>,
    keep_old: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    let on_interrupt = OnInterrupt::Finish("the key change (one object written, one removed)");
    let result = run_interruptible(py, on_interrupt, move || {
        engine::repo_access::rekey(&repo.to_string_lossy(), &access, &new_key_file, keep_old)
    })?;
    let report = result.map_err(to_py_err)?;
    to_py(py, &report)
}

/// A Ceph connection with at most one pool and one image open, for the original tool's
/// `ceph.CephConnection` (`virt_rbd_backup.compat.ceph`, which keeps the original's shape and
/// errors; this class only converts). The key is `key` (the raw bytes of the libvirt secret, as
/// the original took them), or read here from the libvirt secret `libvirt_secret` names
/// (`(uri, domain, secret_uuid, secret_usage)`) so that it never enters Python, or, with
/// neither, whatever keyring `conf_file` names. Connects on construction.
#[pyclass(name = "CephSession", module = "virt_rbd_backup._native")]
struct PyCephSession {
    inner: CephSession,
}

impl PyCephSession {
    /// Runs `work` on the session detached from the interpreter (Ceph calls may block).
    fn call<T: Send>(
        &mut self,
        py: Python<'_>,
        work: impl FnOnce(&mut CephSession) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        let inner = &mut self.inner;
        py.detach(move || work(inner)).map_err(to_py_err)
    }
}

#[pymethods]
impl PyCephSession {
    #[new]
    #[pyo3(signature = (user, conf_file=None, key=None, libvirt_secret=None, ceph_timeout=60))]
    fn new(
        py: Python<'_>,
        user: String,
        conf_file: Option<String>,
        key: Option<Vec<u8>>,
        libvirt_secret: Option<(String, String, Option<String>, Option<String>)>,
        ceph_timeout: u64,
    ) -> PyResult<Self> {
        refresh_logging();
        let key = key.map(|raw| {
            let raw = zeroize::Zeroizing::new(raw);
            SecretString::new(base64::engine::general_purpose::STANDARD.encode(raw.as_slice()))
        });
        let address = ClusterAddress {
            monitors: Vec::new(),
            conf_file,
            user,
        };
        let timeouts = CephTimeouts {
            monitor: Duration::from_secs(ceph_timeout.max(1)),
            osd: Duration::from_secs(ceph_timeout),
        };
        let inner = py
            .detach(move || {
                let key = match (key, libvirt_secret) {
                    (Some(key), _) => Some(key),
                    (None, Some((uri, domain, uuid, usage))) => {
                        let libvirt = HypervisorConnection::open(&uri)?;
                        Some(libvirt.ceph_key(
                            &domain,
                            &address.user,
                            uuid.as_deref(),
                            usage.as_deref(),
                        )?)
                    }
                    (None, None) => None,
                };
                CephSession::connect(address, key, timeouts)
            })
            .map_err(to_py_err)?;
        Ok(PyCephSession { inner })
    }

    /// Whether pool `pool` exists.
    fn pool_exists(&mut self, py: Python<'_>, pool: String) -> PyResult<bool> {
        self.call(py, move |s| s.pool_exists(&pool))
    }

    /// Opens `pool` (in `namespace`), closing the pool and image open before.
    #[pyo3(signature = (pool, namespace=None))]
    fn open_pool(
        &mut self,
        py: Python<'_>,
        pool: String,
        namespace: Option<String>,
    ) -> PyResult<()> {
        self.call(py, move |s| s.open_pool(&pool, namespace.as_deref()))
    }

    /// Closes the pool and the image open in it, if any.
    fn close_pool(&mut self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |s| s.close_pool())
    }

    /// Opens image `name` of the open pool, read-only at `snapshot` or at its head.
    #[pyo3(signature = (name, snapshot=None, read_only=false))]
    fn open_image(
        &mut self,
        py: Python<'_>,
        name: String,
        snapshot: Option<String>,
        read_only: bool,
    ) -> PyResult<()> {
        self.call(py, move |s| {
            s.open_image(&name, snapshot.as_deref(), read_only)
        })
    }

    /// Closes the image, if one is open.
    fn close_image(&mut self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |s| s.close_image())
    }

    /// Creates snapshot `name` of the open image; unless `keep`, it is removed when the process
    /// exits if nothing removed it before (`remove_leftover_snapshots`).
    #[pyo3(signature = (name, keep=false))]
    fn create_snapshot(&mut self, py: Python<'_>, name: String, keep: bool) -> PyResult<()> {
        self.call(py, move |s| s.create_snapshot(&name, keep))
    }

    /// Protects snapshot `name` of the open image.
    fn protect_snapshot(&mut self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(py, move |s| s.protect_snapshot(&name))
    }

    /// Lifts the protection of snapshot `name` of the open image.
    fn unprotect_snapshot(&mut self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(py, move |s| s.unprotect_snapshot(&name))
    }

    /// Whether snapshot `name` of the open image is protected.
    fn snapshot_is_protected(&mut self, py: Python<'_>, name: String) -> PyResult<bool> {
        self.call(py, move |s| s.snapshot_is_protected(&name))
    }

    /// Removes snapshot `name` of the open image (unprotect it first).
    fn remove_snapshot(&mut self, py: Python<'_>, name: String) -> PyResult<()> {
        self.call(py, move |s| s.remove_snapshot(&name))
    }

    /// The open image's size in bytes.
    fn size(&mut self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, |s| s.size())
    }

    /// Reads `length` bytes at `offset` of the open image (fewer at its end).
    fn read<'py>(
        &mut self,
        py: Python<'py>,
        offset: u64,
        length: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let data = self.call(py, move |s| s.read(offset, length))?;
        Ok(pyo3::types::PyBytes::new(py, &data))
    }

    /// Streams the open image into `restic backup --stdin --stdin-filename FILENAME` of
    /// `target` (`repository`, `password_file`, `binary`); returns restic's snapshot id. On
    /// Ctrl-C restic is stopped before it records a snapshot, then KeyboardInterrupt is raised.
    fn stream_to_restic(
        &mut self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        filename: String,
    ) -> PyResult<String> {
        let target = parse_restic_target(py, target)?;
        let cancel = CancelToken::new();
        let session = &self.inner;
        let (sender, receiver) = crossbeam_channel::bounded(1);
        thread::scope(|scope| {
            let token = cancel.clone();
            scope.spawn(move || {
                let _ = sender.send(session.stream_to_restic(&target, &filename, &token));
            });
            let mut interruption: Option<PyErr> = None;
            loop {
                match py.detach(|| receiver.recv_timeout(POLL)) {
                    Ok(result) => {
                        return match interruption {
                            Some(err) => Err(err),
                            None => result.map_err(to_py_err),
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(interruption.unwrap_or_else(|| {
                            BackupError::new_err(
                                "internal error: the restic stream ended without a result",
                            )
                        }))
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if interruption.is_none() {
                            if let Err(err) = py.check_signals() {
                                cancel.cancel();
                                interruption = Some(err);
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Removes the snapshots this process created through a `CephSession` and did not remove
/// (unprotecting them first); returns what happened to each, as a list of dicts
/// (`snapshot`, `outcome`: `removed`, `already_gone` or `failed`, `error`).
#[pyfunction]
fn remove_leftover_snapshots<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    let done = py.detach(compat_session::remove_leftover_snapshots);
    to_py(py, &done)
}

/// Rust core of virt-rbd-backup (private: use the `virt_rbd_backup` package).
/// What a `DiskServer` keeps running.
enum Served {
    Nbd(crate::nbd::NbdServer),
    Fuse(crate::fuse::FuseDisk),
}

/// A backup's disk being served (NBD server or FUSE file) until `close()`; see
/// `engine::serve`. Served on threads of their own: Python need not call into it.
#[pyclass(module = "virt_rbd_backup._native")]
struct DiskServer {
    served: std::sync::Mutex<Option<Served>>,
    info: crate::engine::serve::ServedDisk,
}

#[pymethods]
impl DiskServer {
    /// The NBD URI clients connect to, or the path of the FUSE file.
    #[getter]
    fn address(&self) -> String {
        self.info.address.clone()
    }

    /// What is served, as a dict (domain, uuid, backup_id, disk, size, chain, warnings,
    /// address).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.info)
    }

    /// Whether it still serves.
    #[getter]
    fn serving(&self) -> bool {
        self.served.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Stops serving: the NBD server closes its connections and removes its socket; the FUSE
    /// filesystem is unmounted. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.served.lock().ok().and_then(|mut s| s.take());
        let result = py.detach(move || match taken {
            Some(Served::Nbd(server)) => {
                server.close();
                Ok(())
            }
            Some(Served::Fuse(fuse)) => fuse.unmount(),
            None => Ok(()),
        });
        result.map_err(|e| BackupError::new_err(format!("cannot unmount the FUSE file: {e}")))
    }
}

/// Serves one disk of a backup over NBD (read-only) on `listen` (`unix:PATH` or `HOST:PORT`);
/// returns a running `DiskServer`. `backup` None or "latest" serves the latest backup; `disk`
/// None the backup's only disk.
#[pyfunction]
#[pyo3(signature = (repo, domain, listen, disk=None, backup=None, access=None))]
fn serve(
    py: Python<'_>,
    repo: PathBuf,
    domain: String,
    listen: String,
    disk: Option<String>,
    backup: Option<String>,
    access: Option<&Bound<'_, PyAny>>,
) -> PyResult<DiskServer> {
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::serve::serve_nbd(
            &repo,
            &access,
            &domain,
            backup.as_deref(),
            disk.as_deref(),
            &listen,
        )
    })?;
    let (server, info) = result.map_err(to_py_err)?;
    Ok(DiskServer {
        served: std::sync::Mutex::new(Some(Served::Nbd(server))),
        info,
    })
}

/// Mounts at `mountpoint` a read-only FUSE filesystem whose one file, `disk`, is one disk of a
/// backup; returns a running `DiskServer` (its `address` is the file's path).
#[pyfunction]
#[pyo3(signature = (repo, domain, mountpoint, disk=None, backup=None, access=None))]
fn fuse_disk(
    py: Python<'_>,
    repo: PathBuf,
    domain: String,
    mountpoint: PathBuf,
    disk: Option<String>,
    backup: Option<String>,
    access: Option<&Bound<'_, PyAny>>,
) -> PyResult<DiskServer> {
    let access = parse_repo_access(py, access)?;
    refresh_logging();
    let result = run_interruptible(py, OnInterrupt::Abandon, move || {
        engine::serve::serve_fuse(
            &repo,
            &access,
            &domain,
            backup.as_deref(),
            disk.as_deref(),
            &mountpoint,
        )
    })?;
    let (fuse, info) = result.map_err(to_py_err)?;
    Ok(DiskServer {
        served: std::sync::Mutex::new(Some(Served::Fuse(fuse))),
        info,
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Another extension may have installed a `log` logger already; records then go there.
    if let Ok(handle) = pyo3_log::Logger::new(py, pyo3_log::Caching::LoggersAndLevels)?
        .filter(LevelFilter::Warn)
        .filter_target(LOGGER.to_owned(), LevelFilter::Debug)
        .install()
    {
        let _ = LOG_RESET.set(handle);
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(backup, m)?)?;
    m.add_function(wrap_pyfunction!(list_domains, m)?)?;
    m.add_function(wrap_pyfunction!(list_backups, m)?)?;
    m.add_function(wrap_pyfunction!(restore, m)?)?;
    m.add_function(wrap_pyfunction!(restore_define, m)?)?;
    m.add_function(wrap_pyfunction!(restore_live, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(rekey, m)?)?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(fuse_disk, m)?)?;
    m.add_class::<DiskServer>()?;
    m.add_function(wrap_pyfunction!(thaw_orphans, m)?)?;
    m.add_function(wrap_pyfunction!(library_versions, m)?)?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(list_restic, m)?)?;
    m.add_function(wrap_pyfunction!(ceph_key, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot_name, m)?)?;
    m.add_function(wrap_pyfunction!(parse_rate, m)?)?;
    m.add_function(wrap_pyfunction!(remove_leftover_snapshots, m)?)?;
    m.add_class::<PyCephSession>()?;
    m.add("BackupError", py.get_type::<BackupError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("LibvirtError", py.get_type::<LibvirtError>())?;
    m.add("CephError", py.get_type::<CephError>())?;
    m.add("RepositoryError", py.get_type::<RepositoryError>())?;
    m.add("ResticError", py.get_type::<ResticError>())?;
    m.add("InconsistentError", py.get_type::<InconsistentError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    Ok(())
}
