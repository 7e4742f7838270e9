//! The `enrollment-hook` world: approve or deny a target joining, and add tags.

use crate::bindings::types as wit;

pub use crate::export_enrollment_hook;

/// An enrollment hook plugin. Called once per enrollment, after the token was verified.
pub trait EnrollmentHook {
    /// Decides on `req`.
    fn on_enroll(req: EnrollRequest) -> EnrollDecision;
}

/// A target asking to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// The name the invite was issued for.
    pub name: String,
    /// The machine's hostname.
    pub hostname: String,
    /// The overlay address it will get.
    pub overlay_ip: String,
    /// Tags from the invite (`key`, `value`).
    pub tags: Vec<(String, String)>,
    /// Groups from the invite.
    pub groups: Vec<String>,
    /// The address the enrollment came from.
    pub peer: Option<String>,
}

/// The hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollDecision {
    /// Approve, adding these tags (`key`, `value`).
    Approve(Vec<(String, String)>),
    /// Deny, with the reason.
    Deny(String),
}

impl EnrollDecision {
    /// Approve without extra tags.
    pub fn approve() -> Self {
        EnrollDecision::Approve(Vec::new())
    }

    /// Deny with `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        EnrollDecision::Deny(reason.into())
    }

    /// Adds a tag to an approval (no effect on a denial).
    pub fn with_tag(mut self, key: &str, value: &str) -> Self {
        if let EnrollDecision::Approve(tags) = &mut self {
            tags.push((key.to_owned(), value.to_owned()));
        }
        self
    }
}

impl From<wit::EnrollRequest> for EnrollRequest {
    fn from(r: wit::EnrollRequest) -> Self {
        EnrollRequest {
            name: r.name,
            hostname: r.hostname,
            overlay_ip: r.overlay_ip,
            tags: r.tags,
            groups: r.groups,
            peer: r.peer,
        }
    }
}

impl From<EnrollDecision> for wit::EnrollDecision {
    fn from(d: EnrollDecision) -> Self {
        match d {
            EnrollDecision::Approve(tags) => wit::EnrollDecision::Approve(tags),
            EnrollDecision::Deny(reason) => wit::EnrollDecision::Deny(reason),
        }
    }
}

#[doc(hidden)]
pub fn __adapt<T: EnrollmentHook>(req: wit::EnrollRequest) -> wit::EnrollDecision {
    T::on_enroll(req.into()).into()
}

/// Exports an [`EnrollmentHook`] implementation as the plugin's `on-enroll` function.
#[macro_export]
macro_rules! export_enrollment_hook {
    ($ty:ty) => {
        const _: () = {
            struct __TetherEnrollmentHook;
            impl $crate::__private::bindings::enroll::Guest for __TetherEnrollmentHook {
                fn on_enroll(
                    req: $crate::__private::bindings::types::EnrollRequest,
                ) -> $crate::__private::bindings::types::EnrollDecision {
                    $crate::__private::enroll_adapt::<$ty>(req)
                }
            }
            $crate::__private::bindings::enroll::__tether_export_enrollment_hook!(
                __TetherEnrollmentHook with_types_in $crate::__private::bindings::enroll
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_only_on_approval() {
        let d = EnrollDecision::approve().with_tag("approved-by", "plugin");
        assert_eq!(
            d,
            EnrollDecision::Approve(vec![("approved-by".into(), "plugin".into())])
        );
        let d = EnrollDecision::deny("no").with_tag("a", "b");
        assert_eq!(d, EnrollDecision::Deny("no".into()));
    }
}
