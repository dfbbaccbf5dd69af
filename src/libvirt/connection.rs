//! A connection to libvirt: listing domains, their XML, Ceph keys from libvirt secrets, and
//! a guest-agent ping.
//!
//! Domains are looked up afresh by UUID for every call instead of caching `virDomainPtr`s:
//! a backup runs for hours and domains may be undefined, renamed or restarted meanwhile, and a
//! lookup is a cheap local call in the daemon. libvirt's default error handler prints every
//! error to stderr; [`HypervisorConnection::open`] silences it (process-wide, and nothing else
//! in this program talks to libvirt) because every error is returned with context instead.

use base64::Engine as _;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::secret::Secret;
use virt::sys;
use zeroize::{Zeroize, Zeroizing};

use crate::secret::SecretString;

use super::error::LibvirtError;

/// A domain as listed: what the engine needs before touching it.
#[derive(Debug)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Domain UUID, lower case.
    pub uuid: String,
    /// Whether it is running (only running domains are frozen).
    ///
    /// `false` also when libvirt could not say; `xml` then holds that error, so the domain is
    /// reported as failed rather than silently treated as shut off.
    pub active: bool,
    /// Its inactive-or-live XML (`virDomainGetXMLDesc` with flags 0) or the error reading it.
    pub xml: Result<String, LibvirtError>,
}

/// An open libvirt connection; `Send + Sync`, shared by the worker threads.
///
/// libvirt connections are thread-safe (the `virt` crate marks `Connect` `Send + Sync`), and
/// every method here only makes calls on it, so one connection serves all workers.
pub struct HypervisorConnection {
    conn: Connect,
    uri: String,
}

/// The version of the libvirt library this process runs with (`major.minor.release`).
pub fn library_version() -> Option<String> {
    let v = virt::connect::Connect::version().ok()?;
    Some(format!(
        "{}.{}.{}",
        v / 1_000_000,
        v / 1000 % 1000,
        v % 1000
    ))
}

impl HypervisorConnection {
    /// Opens `uri` (for example `qemu:///system`). An empty `uri` lets libvirt choose its
    /// default (`LIBVIRT_DEFAULT_URI`, then the configured default).
    pub fn open(uri: &str) -> Result<Self, LibvirtError> {
        virt::error::clear_error_callback();
        let conn = Connect::open(if uri.is_empty() { None } else { Some(uri) }).map_err(|e| {
            LibvirtError::Connect {
                uri: uri.to_string(),
                message: e.message().to_string(),
            }
        })?;
        Ok(HypervisorConnection {
            conn,
            uri: uri.to_string(),
        })
    }

    /// Defines (persistently, without starting) a domain from `xml`; returns its UUID.
    pub fn define(&self, name: &str, xml: &str) -> Result<String, LibvirtError> {
        let domain = self
            .conn
            .define_domain_xml(xml)
            .map_err(|e| LibvirtError::DomainCall {
                domain: name.to_string(),
                call: "virDomainDefineXML",
                message: e.message().to_string(),
            })?;
        domain.uuid_string().map_err(|e| LibvirtError::DomainCall {
            domain: name.to_string(),
            call: "virDomainGetUUIDString",
            message: e.message().to_string(),
        })
    }

    /// The emulator binaries this host's libvirt offers (its capabilities' `<emulator>`s),
    /// against which `restore --define` checks a saved domain's `<emulator>`.
    pub fn host_emulators(&self) -> Result<Vec<String>, LibvirtError> {
        let caps = self
            .conn
            .capabilities()
            .map_err(|e| LibvirtError::DomainCall {
                domain: "(host)".into(),
                call: "virConnectGetCapabilities",
                message: e.message().to_string(),
            })?;
        Ok(super::domain_rewrite::emulators_in_capabilities(&caps))
    }

    /// Whether a domain named `name` exists.
    pub fn domain_exists(&self, name: &str) -> bool {
        self.conn.lookup_domain_by_name(name).is_ok()
    }

    /// The `virt` connection, for the other modules of `libvirt` (`live_domain`).
    pub(super) fn raw(&self) -> &Connect {
        &self.conn
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Lists all domains (active and inactive), or only those in `selection` (names or UUIDs,
    /// in the given order). A name that matches nothing is `LibvirtError::NoSuchDomain`.
    ///
    /// All domains come sorted by name. A selection naming the same domain twice (say by name
    /// and by UUID) lists it once, at its first place. A domain that disappears while the list
    /// is being read is left out of the full list (it no longer exists to be backed up).
    pub fn list_domains(&self, selection: &[String]) -> Result<Vec<DomainInfo>, LibvirtError> {
        let mut infos = Vec::new();
        if selection.is_empty() {
            let domains = self
                .conn
                .list_all_domains(0)
                .map_err(|e| LibvirtError::DomainCall {
                    domain: "(all)".into(),
                    call: "virConnectListAllDomains",
                    message: e.message().to_string(),
                })?;
            for domain in domains {
                match describe(&domain) {
                    Ok(info) => infos.push(info),
                    Err(gone) => log::warn!("domain disappeared while listing: {gone}"),
                }
            }
            infos.sort_by(|a, b| a.name.cmp(&b.name));
        } else {
            for selector in selection {
                let domain = self.lookup(selector)?;
                let info =
                    describe(&domain).map_err(|_| LibvirtError::NoSuchDomain(selector.clone()))?;
                if !infos.iter().any(|i: &DomainInfo| i.uuid == info.uuid) {
                    infos.push(info);
                }
            }
        }
        Ok(infos)
    }

    /// Reads a Ceph key from the secret with `uuid` (or usage name) and returns it base64-encoded,
    /// as Ceph's `key` option wants it.
    ///
    /// libvirt stores the key's raw bytes (`virsh secret-set-value` decodes the base64 it is
    /// given); encoding them again gives the string `ceph auth get-key` prints and
    /// `virsh secret-get-value` shows. `usage` is only used when `uuid` is `None`, and is looked
    /// up as a secret of usage type `ceph`. The raw bytes are wiped from memory once encoded.
    pub fn ceph_key(
        &self,
        domain: &str,
        user: &str,
        uuid: Option<&str>,
        usage: Option<&str>,
    ) -> Result<SecretString, LibvirtError> {
        let (secret, label) = match (uuid, usage) {
            (Some(uuid), _) => (
                self.conn.lookup_secret_by_uuid_string(uuid),
                uuid.to_string(),
            ),
            (None, Some(usage)) => (
                self.conn
                    .lookup_secret_by_usage(sys::VIR_SECRET_USAGE_TYPE_CEPH as i32, usage),
                format!("usage {usage:?}"),
            ),
            (None, None) => {
                return Err(LibvirtError::Secret {
                    domain: domain.into(),
                    user: user.into(),
                    uuid: "(none)".into(),
                    message: "the disk's <auth> names no secret uuid or usage".into(),
                })
            }
        };
        let secret_error = |message: String| LibvirtError::Secret {
            domain: domain.into(),
            user: user.into(),
            uuid: label.clone(),
            message,
        };
        let secret = secret.map_err(|e| secret_error(e.message().to_string()))?;
        let raw = secret_value(&secret).map_err(|e| secret_error(e.message().to_string()))?;
        if raw.is_empty() {
            return Err(secret_error(
                "the secret has no value; set it with `virsh secret-set-value`".into(),
            ));
        }
        Ok(encode_ceph_key(&raw))
    }

    /// Whether the domain is running right now.
    pub fn is_active(&self, uuid: &str) -> Result<bool, LibvirtError> {
        let domain = self.lookup_uuid(uuid)?;
        domain.is_active().map_err(|e| LibvirtError::DomainCall {
            domain: domain.name().unwrap_or_else(|_| uuid.to_string()),
            call: "virDomainIsActive",
            message: e.message().to_string(),
        })
    }

    /// Checks that the domain's QEMU guest agent answers `guest-ping` within `timeout_secs`
    /// (at least 1 s).
    ///
    /// This goes through `virDomainQemuAgentCommand`, which marks the running domain as
    /// "tainted: custom-ga-command" in its libvirt log (once per boot). Freezing does not need
    /// a ping first: libvirt syncs with the agent before every command and fails within 5 s
    /// when it does not answer.
    pub fn agent_ping(&self, uuid: &str, timeout_secs: u32) -> Result<(), LibvirtError> {
        let domain = self.lookup_uuid(uuid)?;
        let timeout = i32::try_from(timeout_secs.max(1)).unwrap_or(i32::MAX);
        let name = || domain.name().unwrap_or_else(|_| uuid.to_string());
        match domain.qemu_agent_command(r#"{"execute":"guest-ping"}"#, timeout, 0) {
            Ok(_) => Ok(()),
            // "domain is not running": not the agent's fault, so no agent advice.
            Err(e) if e.code().to_raw() == sys::VIR_ERR_OPERATION_INVALID => {
                Err(LibvirtError::DomainCall {
                    domain: name(),
                    call: "virDomainQemuAgentCommand",
                    message: e.message().to_string(),
                })
            }
            Err(e) => Err(LibvirtError::Agent {
                domain: name(),
                message: e.message().to_string(),
            }),
        }
    }

    /// The domain with this UUID.
    pub(super) fn lookup_uuid(&self, uuid: &str) -> Result<Domain, LibvirtError> {
        self.conn
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|e| lookup_error(uuid, "virDomainLookupByUUIDString", e))
    }

    /// The domain named `selector`, or with that UUID (tried first when it looks like one,
    /// as `virsh` does; a name may look like a UUID, so a miss falls back to the name).
    fn lookup(&self, selector: &str) -> Result<Domain, LibvirtError> {
        if looks_like_uuid(selector) {
            match self.conn.lookup_domain_by_uuid_string(selector) {
                Ok(domain) => return Ok(domain),
                Err(e) if is_no_domain(&e) => {}
                Err(e) => return Err(lookup_error(selector, "virDomainLookupByUUIDString", e)),
            }
        }
        self.conn
            .lookup_domain_by_name(selector)
            .map_err(|e| lookup_error(selector, "virDomainLookupByName", e))
    }
}

/// Name, UUID, state and XML of a domain; `Err` (with the name) only if it no longer exists.
fn describe(domain: &Domain) -> Result<DomainInfo, String> {
    // Name and UUID are cached in the handle, so these cannot fail for a valid handle.
    let uuid = domain
        .uuid_string()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = domain.name().unwrap_or_else(|_| uuid.clone());
    let call_error = |call, e: virt::error::Error| LibvirtError::DomainCall {
        domain: name.clone(),
        call,
        message: e.message().to_string(),
    };
    let (active, xml) = match domain.is_active() {
        Ok(active) => (
            active,
            domain
                .xml_desc(0)
                .map_err(|e| call_error("virDomainGetXMLDesc", e)),
        ),
        Err(e) if is_no_domain(&e) => return Err(name),
        Err(e) => (false, Err(call_error("virDomainIsActive", e))),
    };
    if matches!(&xml, Err(LibvirtError::DomainCall { .. })) && !still_exists(domain) {
        return Err(name);
    }
    Ok(DomainInfo {
        name,
        uuid,
        active,
        xml,
    })
}

/// Whether a domain handle still refers to a defined or running domain.
fn still_exists(domain: &Domain) -> bool {
    !matches!(domain.is_active(), Err(e) if is_no_domain(&e))
}

/// A lookup failure: "no such domain" for the operator, anything else as the failed call.
fn lookup_error(selector: &str, call: &'static str, e: virt::error::Error) -> LibvirtError {
    if is_no_domain(&e) {
        LibvirtError::NoSuchDomain(selector.to_string())
    } else {
        LibvirtError::DomainCall {
            domain: selector.to_string(),
            call,
            message: e.message().to_string(),
        }
    }
}

/// Whether libvirt said the domain does not exist.
fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN
}

/// 32 hex digits with or without the four dashes: what libvirt's UUID parser takes.
fn looks_like_uuid(s: &str) -> bool {
    let digits: Vec<char> = s.chars().filter(|c| *c != '-').collect();
    digits.len() == 32 && digits.iter().all(|c| c.is_ascii_hexdigit()) && s.len() <= 36
}

/// The base64 text of a Ceph key's raw bytes.
fn encode_ceph_key(raw: &[u8]) -> SecretString {
    // Sized exactly so encoding never reallocates and leaves an unwiped copy behind.
    let capacity = base64::encoded_len(raw.len(), true).unwrap_or(0);
    let mut encoded = Zeroizing::new(String::with_capacity(capacity));
    base64::engine::general_purpose::STANDARD.encode_string(raw, &mut encoded);
    SecretString::new(std::mem::take(&mut *encoded))
}

/// Reads a secret's value into memory that is wiped when dropped.
///
/// `virt::secret::Secret::value` copies the value into a plain `Vec` and never frees (let
/// alone wipes) libvirt's buffer, which would leave the key lying in the heap.
fn secret_value(secret: &Secret) -> Result<Zeroizing<Vec<u8>>, virt::error::Error> {
    let mut size: usize = 0;
    // SAFETY: `secret.as_ptr()` is a valid virSecretPtr kept alive by `secret` for the whole
    // call, and `size` is a valid place for libvirt to write the length into.
    let ptr = unsafe { sys::virSecretGetValue(secret.as_ptr(), &mut size, 0) };
    if ptr.is_null() {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: on success libvirt returns a malloc'ed buffer of exactly `size` initialized
    // bytes that the caller owns and must free(); nothing else refers to it, and it is not
    // used after the free.
    unsafe {
        let bytes = std::slice::from_raw_parts_mut(ptr, size);
        let value = Zeroizing::new(bytes.to_vec());
        bytes.zeroize();
        libc::free(ptr.cast());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HypervisorConnection>();
    }

    #[test]
    fn ceph_key_round_trips_through_raw_bytes() {
        // A key as `ceph auth get-key` prints it (made up, same shape: 28 bytes).
        let key = "AQDZ5f1kAAAAABAAk9vE0m2xZ9t8e7L4f5YbJQ==";
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("valid base64");
        assert_eq!(raw.len(), 28);
        assert_eq!(encode_ceph_key(&raw).expose(), key);
    }

    #[test]
    fn uuid_like_selectors() {
        assert!(looks_like_uuid("6f2a1b3c-0000-4d5e-8f90-123456789abc"));
        assert!(looks_like_uuid("6F2A1B3C00004D5E8F90123456789ABC"));
        assert!(!looks_like_uuid("lab-guest"));
        assert!(!looks_like_uuid("6f2a1b3c-0000-4d5e-8f90-123456789abz"));
        assert!(!looks_like_uuid("6f2a1b3c-0000-4d5e-8f90-123456789ab"));
        assert!(!looks_like_uuid("--6f2a1b3c-0000-4d5e-8f90-123456789abc--"));
    }

    /// libvirt's built-in test driver: a real connection without a daemon, with one running
    /// domain named `test`.
    fn test_driver() -> HypervisorConnection {
        HypervisorConnection::open("test:///default").expect("the test driver is built in")
    }

    #[test]
    fn lists_the_test_driver_domain_with_its_xml() {
        let conn = test_driver();
        let all = conn.list_domains(&[]).expect("lists");
        assert_eq!(all.len(), 1);
        let test = &all[0];
        assert_eq!(test.name, "test");
        assert!(test.active);
        assert_eq!(test.uuid, test.uuid.to_ascii_lowercase());
        let xml = test.xml.as_ref().expect("xml");
        let parsed = super::super::parse_domain_xml(&test.name, xml).expect("parses");
        assert_eq!(
            (parsed.name.as_str(), parsed.uuid.as_str()),
            ("test", test.uuid.as_str())
        );
        assert!(conn.is_active(&test.uuid).expect("state"));
    }

    #[test]
    fn selection_by_name_and_uuid_keeps_order_and_dedups() {
        let conn = test_driver();
        let uuid = conn.list_domains(&[]).expect("lists")[0].uuid.clone();
        let picked = conn
            .list_domains(&["test".into(), uuid.to_ascii_uppercase()])
            .expect("both select the same domain");
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].uuid, uuid);
    }

    #[test]
    fn unknown_selection_is_no_such_domain() {
        let conn = test_driver();
        for selector in ["nope", "00000000-0000-0000-0000-000000000001"] {
            match conn.list_domains(&["test".into(), selector.into()]) {
                Err(LibvirtError::NoSuchDomain(s)) => assert_eq!(s, selector),
                other => panic!("{selector}: expected NoSuchDomain, got {other:?}"),
            }
        }
        assert!(matches!(
            conn.is_active("00000000-0000-0000-0000-000000000001"),
            Err(LibvirtError::NoSuchDomain(_))
        ));
    }

    #[test]
    fn bad_uri_is_a_connect_error_naming_it() {
        match HypervisorConnection::open("bogus+driver:///nowhere") {
            Err(e @ LibvirtError::Connect { .. }) => {
                assert!(e.to_string().contains("bogus+driver:///nowhere"), "{e}")
            }
            Err(other) => panic!("expected Connect, got {other}"),
            Ok(_) => panic!("expected Connect error, got a connection"),
        }
    }

    #[test]
    fn missing_secret_error_names_domain_user_and_secret() {
        let conn = test_driver();
        let err = conn
            .ceph_key(
                "vm1",
                "libvirt",
                Some("00000000-0000-0000-0000-00000000beef"),
                None,
            )
            .expect_err("no such secret");
        let msg = err.to_string();
        assert!(
            msg.contains("vm1") && msg.contains("libvirt") && msg.contains("beef"),
            "{msg}"
        );
        let err = conn
            .ceph_key("vm1", "libvirt", None, None)
            .expect_err("names no secret");
        assert!(err.to_string().contains("names no secret"), "{err}");
    }
}
