//! The libvirt side of a live restore: a transient domain started from XML, the block copy of
//! each of its disks into a pre-created image (`virDomainBlockCopy` with
//! `VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB`), its progress and
//! pivot (`virDomainGetBlockJobInfo`, `virDomainBlockJobAbort`), then the persistent definition.
//!
//! `virt` 0.5 has no wrappers for the block job calls: they are called through `virt::sys`,
//! each in one small method with its `// SAFETY:` note. The domain is held as a `virt`
//! `Domain` for the life of the restore (a transient domain cannot be renamed or redefined by
//! someone else without us noticing: its calls then fail and the restore is undone).

use std::ffi::CString;

use virt::domain::Domain;
use virt::sys;

use super::connection::HypervisorConnection;
use super::error::LibvirtError;

/// A running transient domain of a live restore. Dropping it does nothing: the caller decides
/// between [`LiveDomain::destroy`] (undo) and [`LiveDomain::make_persistent`].
pub struct LiveDomain {
    domain: Domain,
    name: String,
}

/// Progress of one disk's block copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyProgress {
    /// No block job on the disk (it finished, was aborted, or never started).
    NoJob,
    /// Copying: `cur` of `end` (units of libvirt's choosing, bytes for QEMU).
    Copying {
        /// Done so far.
        cur: u64,
        /// Total; it grows while the guest writes.
        end: u64,
    },
}

impl CopyProgress {
    /// Whether the copy is in its mirroring phase, ready to pivot (`cur == end`, non-zero).
    pub fn ready(&self) -> bool {
        matches!(self, CopyProgress::Copying { cur, end } if cur == end && *end > 0)
    }
}

fn c_string(name: &str, what: &str, value: &str) -> Result<CString, LibvirtError> {
    CString::new(value).map_err(|_| LibvirtError::MalformedXml {
        domain: name.to_string(),
        message: format!("{what} holds a NUL byte"),
    })
}

fn last_error() -> String {
    virt::error::Error::last_error().message().to_string()
}

impl LiveDomain {
    /// Creates and starts a transient domain from `xml` (`virDomainCreateXML`): it exists only
    /// while it runs, so a failure or a destroy leaves nothing defined.
    pub fn start(
        libvirt: &HypervisorConnection,
        name: &str,
        xml: &str,
    ) -> Result<Self, LibvirtError> {
        let domain =
            libvirt
                .raw()
                .create_domain_xml(xml, 0)
                .map_err(|e| LibvirtError::DomainCall {
                    domain: name.to_string(),
                    call: "virDomainCreateXML",
                    message: e.message().to_string(),
                })?;
        Ok(LiveDomain {
            domain,
            name: name.to_string(),
        })
    }

    /// The domain's UUID.
    pub fn uuid(&self) -> Result<String, LibvirtError> {
        self.domain
            .uuid_string()
            .map_err(|e| self.call_error("virDomainGetUUIDString", e.message().to_string()))
    }

    fn call_error(&self, call: &'static str, message: String) -> LibvirtError {
        LibvirtError::DomainCall {
            domain: self.name.clone(),
            call,
            message,
        }
    }

    /// Starts copying disk `target` into the existing image that `dest_xml` (a `<disk>`)
    /// describes, as a transient job (it does not survive the domain's definition change).
    pub fn start_copy(&self, target: &str, dest_xml: &str) -> Result<(), LibvirtError> {
        let disk = c_string(&self.name, "the disk target", target)?;
        let dest = c_string(&self.name, "the copy's destination XML", dest_xml)?;
        let flags = sys::VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
        // SAFETY: the domain pointer is valid while `self.domain` lives; both strings are
        // NUL-terminated and outlive the call; no typed parameters are passed (null, 0).
        let rc = unsafe {
            sys::virDomainBlockCopy(
                self.domain.as_ptr(),
                disk.as_ptr(),
                dest.as_ptr(),
                std::ptr::null_mut(),
                0,
                flags,
            )
        };
        if rc < 0 {
            return Err(self.call_error(
                "virDomainBlockCopy",
                format!("disk {target}: {}", last_error()),
            ));
        }
        Ok(())
    }

    /// The progress of disk `target`'s block job.
    pub fn copy_progress(&self, target: &str) -> Result<CopyProgress, LibvirtError> {
        let disk = c_string(&self.name, "the disk target", target)?;
        let mut info = sys::virDomainBlockJobInfo {
            type_: 0,
            bandwidth: 0,
            cur: 0,
            end: 0,
        };
        // SAFETY: valid domain pointer, NUL-terminated disk name, and `info` is a properly
        // sized, writable struct that libvirt fills; it returns 0 (no job), 1 (job) or -1.
        let rc = unsafe {
            sys::virDomainGetBlockJobInfo(self.domain.as_ptr(), disk.as_ptr(), &mut info, 0)
        };
        match rc {
            0 => Ok(CopyProgress::NoJob),
            1 => Ok(CopyProgress::Copying {
                cur: info.cur,
                end: info.end,
            }),
            _ => Err(self.call_error(
                "virDomainGetBlockJobInfo",
                format!("disk {target}: {}", last_error()),
            )),
        }
    }

    /// Ends disk `target`'s block job: with `pivot`, the guest switches to the copy (only
    /// once it is ready); without, the copy is abandoned and the guest stays where it was.
    pub fn end_copy(&self, target: &str, pivot: bool) -> Result<(), LibvirtError> {
        let disk = c_string(&self.name, "the disk target", target)?;
        let flags = if pivot {
            sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
        } else {
            0
        };
        // SAFETY: valid domain pointer and NUL-terminated disk name; synchronous (no ASYNC
        // flag): it returns once QEMU has switched or cancelled.
        let rc = unsafe { sys::virDomainBlockJobAbort(self.domain.as_ptr(), disk.as_ptr(), flags) };
        if rc < 0 {
            return Err(self.call_error(
                "virDomainBlockJobAbort",
                format!("disk {target}: {}", last_error()),
            ));
        }
        Ok(())
    }

    /// Makes the running domain persistent with `xml` (which must carry its name and UUID):
    /// it keeps running as it is, and boots from `xml` next time.
    pub fn make_persistent(
        &self,
        libvirt: &HypervisorConnection,
        xml: &str,
    ) -> Result<(), LibvirtError> {
        libvirt.define(&self.name, xml).map(|_| ())
    }

    /// The domain's live XML.
    pub fn live_xml(&self) -> Result<String, LibvirtError> {
        self.domain
            .xml_desc(0)
            .map_err(|e| self.call_error("virDomainGetXMLDesc", e.message().to_string()))
    }

    /// Stops the transient domain at once (`virDomainDestroy`); it is then gone from libvirt.
    pub fn destroy(&self) -> Result<(), LibvirtError> {
        self.domain
            .destroy()
            .map_err(|e| self.call_error("virDomainDestroy", e.message().to_string()))
    }

    /// The host's capabilities XML (for the DAC owner of QEMU processes).
    pub fn capabilities(libvirt: &HypervisorConnection) -> Result<String, LibvirtError> {
        libvirt
            .raw()
            .capabilities()
            .map_err(|e| LibvirtError::DomainCall {
                domain: "(host)".into(),
                call: "virConnectGetCapabilities",
                message: e.message().to_string(),
            })
    }
}
