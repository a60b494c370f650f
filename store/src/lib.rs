//! Ring log.
