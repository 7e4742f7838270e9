//! Build script: see ../build-commit.rs (the git commit for `--version` and `tether status`).
include!("../build-commit.rs");
