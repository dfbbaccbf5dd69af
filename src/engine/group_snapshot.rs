//! Group-consistent snapshots: the RBD group that covers a domain's disks, and a guard that
//! removes a group snapshot unless the backup keeps it.

use crate::ceph::{CephError, PoolContext, RbdGroup, RbdImage};
use crate::error::Error;
use crate::plan::{choose_group, domain_group_name, GroupChoice};

use super::options::ConsistencyPolicy;

/// The group whose snapshot covers every disk of a domain, if one can; creates and fills one
/// when `policy` is `Group` and no disk is in a group. Returns the group and, in `Auto` mode, a
/// warning when the disks are grouped in a way no group snapshot covers. With `PerDisk` the
/// group is still returned (never created): the run removes its old group snapshots.
pub(super) fn domain_group<'p>(
    policy: ConsistencyPolicy,
    domain_uuid: &str,
    pools: &'p [PoolContext<'p>],
    images: &[RbdImage<'_>],
    image_names: &[&str],
) -> Result<(Option<RbdGroup<'p>>, Option<String>), Error> {
    if images.is_empty() {
        return Ok((None, None));
    }
    let memberships = images
        .iter()
        .map(|i| i.group())
        .collect::<Result<Vec<_>, CephError>>()?;
    let names: Vec<String> = images.iter().map(|i| i.spec().to_string()).collect();
    let choice = choose_group(&names, &memberships, policy == ConsistencyPolicy::Group)
        .map_err(Error::Usage)?;
    match choice {
        GroupChoice::None { .. } if policy == ConsistencyPolicy::PerDisk => Ok((None, None)),
        GroupChoice::None { reason } => Ok((None, reason)),
        GroupChoice::Existing { pool_id, name } => {
            let Some(pool) = pools.iter().find(|p| p.pool_id() == pool_id) else {
                let message = format!(
                    "the disks are in RBD group {name} of pool id {pool_id}, which holds none of the domain's disks; this tool snapshots only groups in a pool of one of the disks"
                );
                return match policy {
                    ConsistencyPolicy::Group => Err(Error::Usage(message)),
                    ConsistencyPolicy::Auto => Ok((None, Some(message))),
                    ConsistencyPolicy::PerDisk => Ok((None, None)),
                };
            };
            Ok((Some(RbdGroup::new(pool, &name)?), None))
        }
        GroupChoice::Create => {
            let group = RbdGroup::new(&pools[0], &domain_group_name(domain_uuid))?;
            group.create()?;
            for (pool, name) in pools.iter().zip(image_names) {
                group.add_image(pool, name)?;
            }
            log::info!(
                "created RBD group {} with the domain's images",
                group.spec()
            );
            Ok((Some(group), None))
        }
    }
}

/// Owns a freshly created group snapshot; dropping it removes the snapshot (logging failures)
/// unless `keep` disarmed it.
pub(super) struct GroupSnapshotGuard<'g> {
    group: &'g RbdGroup<'g>,
    name: String,
    armed: bool,
    create_ms: f64,
}

impl<'g> GroupSnapshotGuard<'g> {
    /// Snapshots every image of `group` at one instant, as `name`.
    pub fn create(group: &'g RbdGroup<'g>, name: &str) -> Result<Self, CephError> {
        let started = std::time::Instant::now();
        group.create_snapshot(name)?;
        Ok(GroupSnapshotGuard {
            group,
            name: name.to_string(),
            armed: true,
            create_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// How long the create took, in milliseconds.
    pub fn create_ms(&self) -> f64 {
        self.create_ms
    }

    /// Keeps the snapshot (verify --source compares with it later).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for GroupSnapshotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.group.remove_snapshot(&self.name) {
                log::error!(
                    "could not remove group snapshot {}@{}: {e}; remove it with `rbd group snap rm`",
                    self.group.spec(),
                    self.name
                );
            }
        }
    }
}
