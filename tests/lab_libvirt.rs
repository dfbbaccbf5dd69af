//! The libvirt layer against the lab's real libvirtd and running guest (`lab/lab.sh up`).
//!
//! Skipped unless `VRB_LAB=1`. Every check compares with what `virsh` says, not with what
//! this crate just produced. Ceph keys are compared, never printed.
//!
//! Run: `VRB_LAB=1 cargo test --test lab_libvirt -- --test-threads=1`

use std::process::Command;

use virt_rbd_backup::libvirt::{
    parse_domain_xml, DiskEntry, DomainDescription, DomainInfo, FreezeGuard, HypervisorConnection,
    LibvirtError, SkipReason,
};

fn lab_enabled() -> bool {
    if std::env::var("VRB_LAB").as_deref() == Ok("1") {
        true
    } else {
        eprintln!(
            "skipped: set VRB_LAB=1 with the lab up (lab/lab.sh up) to run the libvirt lab tests"
        );
        false
    }
}

fn uri() -> String {
    std::env::var("LAB_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into())
}

/// `virsh -c URI ARGS...` stdout; panics with stderr (never stdout, which may be a key).
fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri())
        .args(args)
        .output()
        .expect("virsh runs");
    assert!(
        out.status.success(),
        "virsh {} failed: {}",
        args.first().copied().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("virsh prints UTF-8")
}

/// The guest agent's fsfreeze status for `domain`: "frozen" or "thawed".
fn fsfreeze_status(domain: &str) -> String {
    let reply = virsh(&[
        "qemu-agent-command",
        domain,
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    let value: serde_json::Value = serde_json::from_str(reply.trim()).expect("agent replies JSON");
    value["return"]
        .as_str()
        .expect("status is a string")
        .to_string()
}

/// The agent response timeout libvirt keeps in the running domain's status file, or `None`
/// when that file (a libvirt internal) is not readable here.
fn status_agent_timeout(domain: &str) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.xml")).ok()?;
    let start = status.find("<agentTimeout>")? + "<agentTimeout>".len();
    let end = start + status[start..].find("</agentTimeout>")?;
    status[start..end].trim().parse().ok()
}

/// `virsh domblklist --details` as (type, target, source) rows.
fn blklist(domain: &str) -> Vec<(String, String, String)> {
    virsh(&["domblklist", domain, "--details"])
        .lines()
        .skip(2)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols.as_slice() {
                [kind, _device, target, source] => {
                    Some((kind.to_string(), target.to_string(), source.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Our view of the disks in the same shape as `blklist`.
fn our_disks(desc: &DomainDescription, domain: &str) -> Vec<(String, String, String)> {
    let truth = blklist(domain);
    desc.disks
        .iter()
        .map(|d| match d {
            DiskEntry::Rbd(s) => {
                let name = match &s.namespace {
                    Some(ns) => format!("{}/{}/{}", s.pool, ns, s.image),
                    None => format!("{}/{}", s.pool, s.image),
                };
                ("network".to_string(), s.target.clone(), name)
            }
            DiskEntry::Skipped { target, reason } => {
                assert_eq!(*reason, SkipReason::NotNetwork, "{domain}: {target:?}");
                let target = target.clone().expect("lab disks have targets");
                // Take type and source from virsh: we do not model non-RBD disks.
                let row = truth
                    .iter()
                    .find(|r| r.1 == target)
                    .expect("virsh lists it");
                assert_ne!(row.0, "network");
                row.clone()
            }
        })
        .collect()
}

fn find<'a>(all: &'a [DomainInfo], name: &str) -> &'a DomainInfo {
    all.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} is listed"))
}

#[test]
fn lab_libvirt_listing_xml_secret_and_freeze() {
    if !lab_enabled() {
        return;
    }
    let conn = HypervisorConnection::open(&uri()).expect("connects");

    // Listing: all domains, sorted, with state and UUID as virsh reports them.
    let all = conn.list_domains(&[]).expect("lists");
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    for (name, running) in [
        ("lab-guest", true),
        ("lab-off", false),
        ("lab-local", false),
    ] {
        let info = find(&all, name);
        assert_eq!(info.active, running, "{name} state");
        assert_eq!(info.uuid, virsh(&["domuuid", name]).trim(), "{name} uuid");
        assert_eq!(conn.is_active(&info.uuid).expect("state"), running);
    }

    // Selection keeps its order, accepts UUIDs, and rejects unknown names.
    let off_uuid = find(&all, "lab-off").uuid.clone();
    let picked = conn
        .list_domains(&[
            "lab-local".into(),
            off_uuid.to_uppercase(),
            "lab-guest".into(),
        ])
        .expect("selection");
    let picked: Vec<&str> = picked.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(picked, ["lab-local", "lab-off", "lab-guest"]);
    assert!(matches!(
        conn.list_domains(&["lab-guest".into(), "lab-no-such-domain".into()]),
        Err(LibvirtError::NoSuchDomain(n)) if n == "lab-no-such-domain"
    ));

    // XML: disks as virsh domblklist sees them.
    let mut descs = std::collections::HashMap::new();
    for name in ["lab-guest", "lab-off", "lab-local"] {
        let info = find(&all, name);
        let xml = info.xml.as_ref().expect("xml readable");
        let desc = parse_domain_xml(name, xml).expect("lab XML parses");
        assert_eq!(
            (desc.name.as_str(), desc.uuid.as_str()),
            (name, info.uuid.as_str())
        );
        assert_eq!(our_disks(&desc, name), blklist(name), "{name} disks");
        descs.insert(name, desc);
    }
    let rbd: Vec<_> = descs["lab-guest"]
        .disks
        .iter()
        .filter_map(|d| match d {
            DiskEntry::Rbd(s) => Some(s.clone()),
            DiskEntry::Skipped { .. } => None,
        })
        .collect();
    assert_eq!(rbd.len(), 2, "lab-guest has two RBD disks");
    assert_eq!(descs["lab-guest"].disks.len(), 3, "and a local one");
    assert!(descs["lab-local"]
        .disks
        .iter()
        .all(|d| !matches!(d, DiskEntry::Rbd(_))));

    // Secret: the key equals what virsh prints, looked up by UUID and by usage.
    let auth = rbd[0].auth.clone().expect("lab disks use cephx");
    let secret_uuid = auth
        .secret_uuid
        .clone()
        .expect("lab names the secret by UUID");
    let truth = virsh(&["secret-get-value", &secret_uuid]);
    let by_uuid = conn
        .ceph_key("lab-guest", &auth.username, Some(&secret_uuid), None)
        .expect("reads the key by uuid");
    assert!(
        by_uuid.expose() == truth.trim(),
        "key by uuid differs from virsh secret-get-value"
    );
    let secret_xml = virsh(&["secret-dumpxml", &secret_uuid]);
    let doc = roxmltree::Document::parse(&secret_xml).expect("secret XML");
    let usage = doc
        .descendants()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .expect("secret has a usage name");
    let by_usage = conn
        .ceph_key("lab-guest", &auth.username, None, Some(usage))
        .expect("reads the key by usage");
    assert!(
        by_usage.expose() == truth.trim(),
        "key by usage differs from virsh secret-get-value"
    );

    // Agent: answers for the running guest, not for the shut-off one.
    let guest_uuid = find(&all, "lab-guest").uuid.clone();
    conn.agent_ping(&guest_uuid, 10)
        .expect("lab-guest's agent answers");
    let ping = conn
        .agent_ping(&off_uuid, 2)
        .expect_err("a shut-off domain has no agent");
    eprintln!("pinging a shut-off domain: {ping}");

    // Freeze: all filesystems, seen frozen by the agent; dropping the guard thaws.
    assert_eq!(
        fsfreeze_status("lab-guest"),
        "thawed",
        "lab-guest starts thawed"
    );
    {
        let guard = FreezeGuard::freeze(&conn, &guest_uuid, "lab-guest", &[]).expect("freezes");
        assert!(
            guard.outcome().frozen_filesystems >= 1,
            "{:?}",
            guard.outcome()
        );
        assert_eq!(fsfreeze_status("lab-guest"), "frozen");
        match status_agent_timeout("lab-guest") {
            Some(t) => assert_eq!(t, 30, "the freeze bounds the agent timeout"),
            None => eprintln!("cannot read libvirt's status file; agent timeout not checked"),
        }
    }
    assert_eq!(fsfreeze_status("lab-guest"), "thawed", "drop thawed it");
    if let Some(t) = status_agent_timeout("lab-guest") {
        assert_eq!(
            t, -2,
            "the agent timeout is back to libvirt's default (block)"
        );
    }

    // Freeze one mountpoint, thaw explicitly.
    let guard = FreezeGuard::freeze(&conn, &guest_uuid, "lab-guest", &["/mnt/a".into()])
        .expect("freezes /mnt/a");
    assert_eq!(guard.outcome().frozen_filesystems, 1);
    assert_eq!(fsfreeze_status("lab-guest"), "frozen");
    let frozen_at = guard.outcome().frozen_at;
    let thawed_at = guard.thaw().expect("thaws");
    assert!(thawed_at >= frozen_at);
    assert_eq!(fsfreeze_status("lab-guest"), "thawed");

    // A shut-off domain cannot be frozen, and the error names it.
    match FreezeGuard::freeze(&conn, &off_uuid, "lab-off", &[]) {
        Err(e @ LibvirtError::Freeze { .. }) => {
            eprintln!("freezing a shut-off domain: {e}");
            assert!(e.to_string().contains("lab-off"), "{e}")
        }
        Err(e) => panic!("expected Freeze error, got {e}"),
        Ok(_) => panic!("froze a shut-off domain"),
    };
}
