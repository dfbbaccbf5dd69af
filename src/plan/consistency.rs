//! Which RBD group, if any, gives a domain's disks one instant when no guest freeze does.
//!
//! A group snapshot covers every image of the group at one instant, so it only helps when all
//! of a domain's images are members of the same group. `--consistency group` asks for that:
//! images in no group are put into a new group for the domain; images split over several
//! groups cannot be served and are an error the operator must resolve.

/// The group an image belongs to: (pool id, group name).
pub type GroupMembership = Option<(i64, String)>;

/// What to do about groups for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChoice {
    /// Every image is in this group: snapshot it.
    Existing {
        /// Pool id of the group.
        pool_id: i64,
        /// Group name.
        name: String,
    },
    /// No image is in a group and a group was asked for: create one and add every image.
    Create,
    /// Per-disk snapshots; `reason` says why a group cannot be used, where the operator may
    /// want to know.
    None {
        /// Why not, when the images are grouped in a way a group snapshot cannot serve.
        reason: Option<String>,
    },
}

/// Decides from each image's membership (`images[i]` is named `names[i]`) whether a group
/// snapshot can cover the domain. `required` is `--consistency group`: a domain whose images
/// are split over groups is then an error rather than a fallback.
pub fn choose_group(
    names: &[String],
    images: &[GroupMembership],
    required: bool,
) -> Result<GroupChoice, String> {
    let Some(first) = images.first() else {
        return Ok(GroupChoice::None { reason: None });
    };
    if images.iter().all(|m| m == first) {
        return Ok(match first {
            Some((pool_id, name)) => GroupChoice::Existing {
                pool_id: *pool_id,
                name: name.clone(),
            },
            None if required => GroupChoice::Create,
            None => GroupChoice::None { reason: None },
        });
    }
    let listing: Vec<String> = names
        .iter()
        .zip(images)
        .map(|(image, m)| match m {
            Some((_, group)) => format!("{image} in group {group}"),
            None => format!("{image} in no group"),
        })
        .collect();
    let reason = format!(
        "the disks are not all in one RBD group ({}), so no group snapshot covers them",
        listing.join(", ")
    );
    if required {
        Err(format!(
            "{reason}; put every disk of the domain into one group (`rbd group image add`), or take them all out of their groups and let --consistency group create one"
        ))
    } else {
        Ok(GroupChoice::None {
            reason: Some(reason),
        })
    }
}

/// The group `--consistency group` creates for a domain.
pub fn domain_group_name(domain_uuid: &str) -> String {
    format!("{}{domain_uuid}", super::SNAPSHOT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("rbd/img{i}")).collect()
    }

    fn member(pool: i64, group: &str) -> GroupMembership {
        Some((pool, group.to_string()))
    }

    #[test]
    fn all_images_in_one_group_use_it_whatever_the_policy() {
        let images = vec![member(2, "db"), member(2, "db")];
        let expected = GroupChoice::Existing {
            pool_id: 2,
            name: "db".into(),
        };
        assert_eq!(
            choose_group(&names(2), &images, false),
            Ok(expected.clone())
        );
        assert_eq!(choose_group(&names(2), &images, true), Ok(expected));
    }

    #[test]
    fn ungrouped_images_get_a_group_only_when_asked() {
        let images = vec![None, None];
        assert_eq!(
            choose_group(&names(2), &images, false),
            Ok(GroupChoice::None { reason: None })
        );
        assert_eq!(
            choose_group(&names(2), &images, true),
            Ok(GroupChoice::Create)
        );
    }

    #[test]
    fn split_membership_falls_back_with_a_reason_or_fails_when_required() {
        for images in [
            vec![member(2, "db"), None],
            vec![member(2, "db"), member(2, "web")],
            vec![member(2, "db"), member(3, "db")],
        ] {
            match choose_group(&names(2), &images, false) {
                Ok(GroupChoice::None { reason: Some(r) }) => {
                    assert!(r.contains("rbd/img0"), "{r}");
                    assert!(r.contains("rbd/img1"), "{r}");
                }
                other => panic!("{images:?}: {other:?}"),
            }
            let err = choose_group(&names(2), &images, true).unwrap_err();
            assert!(err.contains("rbd group image add"), "{err}");
        }
    }

    #[test]
    fn a_domain_without_disks_needs_no_group() {
        assert_eq!(
            choose_group(&[], &[], true),
            Ok(GroupChoice::None { reason: None })
        );
    }

    #[test]
    fn the_created_group_is_named_after_the_domain_uuid() {
        assert_eq!(
            domain_group_name("0b5a1c2d-0000-4000-8000-000000000001"),
            "virt-rbd-backup-0b5a1c2d-0000-4000-8000-000000000001"
        );
    }
}
