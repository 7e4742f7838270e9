// placeholder so the workspace manifest parses; the policy work replaces this file.
fn main() {}
