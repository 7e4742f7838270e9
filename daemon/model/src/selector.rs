//! Host selectors (`host:a,b`, `group:g`, `tag:k=v`, `all`, `!`, `~regex`): filled in by the policy work.
