//! librados/librbd access: connect, open images, snapshots, extents, pipelined reads.
pub mod error;
pub use error::CephError;
