//! Which root-disk backend a new VM gets: `[vm] disk_backend` in the config
//! (`auto` by default: reflink, else overlay when the image can, else copy;
//! see `disk::choose_backend`).

use banger_core::store::ImageRow;
use banger_proto::guest::OVERLAY_FEATURE;

use crate::error::Error;

use crate::disk::{self, Choice, RootBackend};
use crate::vm::Vms;

pub fn backend(d: &Vms, image: &ImageRow) -> Result<Choice, Error> {
    let pref = match d.config.vm.disk_backend.as_str() {
        "auto" => None,
        "reflink" => Some(RootBackend::Reflink),
        "overlay" => Some(RootBackend::Overlay),
        "dm-snapshot" => Some(RootBackend::DmSnapshot),
        "copy" => Some(RootBackend::Copy),
        other => {
            return Err(Error::precondition(format!(
                "config [vm] disk_backend = {other:?}: use auto, reflink, overlay, dm-snapshot \
                 or copy"
            )))
        }
    };
    disk::choose_backend(
        pref,
        &d.paths.vms_dir(),
        d.disks.as_ref(),
        overlay_support(image),
    )
    .map_err(Error::from)
}

/// Whether VMs of `image` can have an overlay root: its agent must have the
/// init mode that assembles it, which the `overlay` feature records (set by
/// `image build` and `image pull`, which install this banger's agent; an
/// image registered without `--features ...,overlay`, or made before the
/// agent had it, lacks it).
pub fn overlay_support(image: &ImageRow) -> Result<(), String> {
    if image.has(OVERLAY_FEATURE) {
        return Ok(());
    }
    Err(format!(
        "image {:?} does not have the {OVERLAY_FEATURE:?} feature (its agent cannot assemble \
         the overlay root: made by an older banger, or registered without it); rebuild or \
         re-pull it for an O(1) root disk",
        image.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_needs_the_feature() {
        let mut image = ImageRow {
            id: "i".into(),
            name: "old".into(),
            owner_uid: 0,
            kernel_id: "k".into(),
            rootfs: banger_core::store::StoredFile {
                rel_path: "images/i/rootfs.ext4".into(),
                size: 4096,
                sha256: "00".into(),
            },
            work_seed: None,
            created_at: "now".into(),
            features: vec!["ssh".into(), "agent".into()],
        };
        let why = overlay_support(&image).unwrap_err();
        assert!(
            why.contains("\"old\"") && why.contains("\"overlay\""),
            "{why}"
        );
        image.features.push(OVERLAY_FEATURE.into());
        assert_eq!(overlay_support(&image), Ok(()));
    }
}
