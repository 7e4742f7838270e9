//! Enrollment: signed single-use invite tokens, the mutually authenticated enrollment exchange, host inventory.
#![forbid(unsafe_code)]
