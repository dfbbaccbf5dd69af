//! Ceph connections for a run: one per (monitors, config, user, key), shared by the workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ceph::{CephError, CephTimeouts, ClusterAddress, RadosCluster};
use crate::libvirt::RbdDiskSpec;
use crate::secret::SecretString;

/// The cluster address a disk's XML names.
pub fn cluster_address(spec: &RbdDiskSpec) -> ClusterAddress {
    let monitors = spec
        .hosts
        .iter()
        .map(|h| {
            let host = if h.name.contains(':') && !h.name.starts_with('[') {
                format!("[{}]", h.name)
            } else {
                h.name.clone()
            };
            match h.port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    ClusterAddress {
        monitors,
        conf_file: spec.config_file.clone(),
        user: spec.auth.as_ref().map_or_else(
            || super::ceph_access::DEFAULT_CEPH_USER.to_string(),
            |a| a.username.clone(),
        ),
    }
}

/// Connections by address and key. The key is part of the cache key (as a hash, never stored
/// in clear) so a domain whose secret is wrong never rides on another domain's connection.
/// Cache key: the address and a BLAKE3 hash of the key.
type CacheKey = (ClusterAddress, [u8; 32]);

#[derive(Default)]
pub struct ConnectionCache {
    connections: Mutex<HashMap<CacheKey, Arc<RadosCluster>>>,
    timeouts: CephTimeouts,
}

impl ConnectionCache {
    /// An empty cache whose connections use `timeouts`.
    pub fn new(timeouts: CephTimeouts) -> Self {
        ConnectionCache {
            connections: Mutex::default(),
            timeouts,
        }
    }

    /// A connection for `address` with `key`, made on first use.
    pub fn get(
        &self,
        address: &ClusterAddress,
        key: Option<&SecretString>,
    ) -> Result<Arc<RadosCluster>, CephError> {
        let key_hash = *blake3::hash(key.map_or(&b""[..], |k| k.expose().as_bytes())).as_bytes();
        let cache_key = (address.clone(), key_hash);
        if let Some(found) = self.lock().get(&cache_key) {
            return Ok(Arc::clone(found));
        }
        // Connect outside the lock: a slow cluster must not block other domains' lookups.
        let cluster = Arc::new(RadosCluster::connect(address, key, self.timeouts)?);
        Ok(Arc::clone(self.lock().entry(cache_key).or_insert(cluster)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<RadosCluster>>> {
        // A panic while holding this lock leaves a valid map; keep using it.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::{MonitorHost, RbdAuth};

    fn spec(hosts: Vec<MonitorHost>) -> RbdDiskSpec {
        RbdDiskSpec {
            target: "vda".into(),
            pool: "rbd".into(),
            namespace: None,
            image: "a".into(),
            hosts,
            config_file: None,
            auth: Some(RbdAuth {
                username: "libvirt".into(),
                secret_uuid: Some("u".into()),
                secret_usage: None,
            }),
            device: "disk".into(),
            readonly: false,
        }
    }

    #[test]
    fn monitor_addresses_come_from_the_disk_hosts() {
        let a = cluster_address(&spec(vec![
            MonitorHost {
                name: "10.0.0.1".into(),
                port: Some(6789),
            },
            MonitorHost {
                name: "mon2".into(),
                port: None,
            },
            MonitorHost {
                name: "fd00::1".into(),
                port: Some(3300),
            },
        ]));
        assert_eq!(a.monitors, vec!["10.0.0.1:6789", "mon2", "[fd00::1]:3300"]);
        assert_eq!(a.user, "libvirt");
    }

    #[test]
    fn disks_without_hosts_use_the_config_file() {
        let a = cluster_address(&spec(vec![]));
        assert!(a.monitors.is_empty());
        assert_eq!(a.describe(), "from the default ceph.conf");
    }
}
