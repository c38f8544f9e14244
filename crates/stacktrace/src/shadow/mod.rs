//! Hardware and compiler shadow stacks: CET, GCS, SCS.

pub mod cet;
pub mod gcs;
pub mod scs;
