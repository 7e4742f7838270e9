//! Test plugin (enrollment-hook world): denies names starting with `evil`, approves the rest
//! with the extra tag `approved-by=plugin`.
use tether_plugin_sdk::enroll::{
    EnrollDecision, EnrollRequest, EnrollmentHook, export_enrollment_hook,
};

/// Tags approved enrollments.
pub struct EnrollTagger;

impl EnrollmentHook for EnrollTagger {
    fn on_enroll(req: EnrollRequest) -> EnrollDecision {
        if req.name.starts_with("evil") {
            return EnrollDecision::deny(format!("enroll-tagger refuses {}", req.name));
        }
        EnrollDecision::approve().with_tag("approved-by", "plugin")
    }
}

export_enrollment_hook!(EnrollTagger);
