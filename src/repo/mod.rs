//! The backup repository on disk.
pub mod error;
pub use error::RepoError;
