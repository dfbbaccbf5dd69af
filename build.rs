//! Links the host's librbd and librados.
//!
//! Debian's librbd-dev/librados-dev ship no pkg-config files, so the libraries are named
//! directly. The wheel links the system copies and must not bundle them: an RBD client has
//! to match the cluster tooling installed on the hypervisor.
fn main() {
    println!("cargo:rustc-link-lib=rbd");
    println!("cargo:rustc-link-lib=rados");
    println!("cargo:rerun-if-changed=build.rs");
}
