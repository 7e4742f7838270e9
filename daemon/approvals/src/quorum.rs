//! Quorum: several conditions that must hold together, e.g. `2 × operator AND 1 × admin`.
//!
//! A reviewer fills at most one slot. A reviewer holding role R fills a slot that needs R; an
//! admin fills a slot of any role. So the best assignment puts every non-admin reviewer into a
//! slot of their own role and lets the admins fill what is left: the quorum is met exactly when
//! `Σ_r max(0, need_r − have_r) ≤ have_admin − need_admin` over the non-admin roles r (and
//! `have_admin ≥ need_admin`). [`met`] computes that; [`eligible`] says whether a reviewer's
//! role can fill any slot at all.

use std::collections::BTreeMap;

use tether_model::Role;

use crate::QuorumRule;

/// Whether approvals from reviewers with `roles` (one entry per distinct reviewer) meet `rules`.
pub fn met(rules: &[QuorumRule], roles: &[Role]) -> bool {
    let mut need: BTreeMap<Role, u64> = BTreeMap::new();
    for r in rules {
        *need.entry(r.role).or_default() += u64::from(r.count);
    }
    let mut have: BTreeMap<Role, u64> = BTreeMap::new();
    for r in roles {
        *have.entry(*r).or_default() += 1;
    }
    let admins = have.get(&Role::Admin).copied().unwrap_or(0);
    let need_admins = need.get(&Role::Admin).copied().unwrap_or(0);
    let Some(spare) = admins.checked_sub(need_admins) else {
        return false;
    };
    let missing: u64 = need
        .iter()
        .filter(|(role, _)| **role != Role::Admin)
        .map(|(role, n)| n.saturating_sub(have.get(role).copied().unwrap_or(0)))
        .sum();
    missing <= spare
}

/// Whether a reviewer with `role` can count toward `rules` at all.
pub fn eligible(rules: &[QuorumRule], role: Role) -> bool {
    role == Role::Admin || rules.iter().any(|r| r.role == role && r.count > 0)
}

/// `2 × operator + 1 × admin`, for messages.
pub fn describe(rules: &[QuorumRule]) -> String {
    rules
        .iter()
        .map(|r| format!("{} × {}", r.count, r.role))
        .collect::<Vec<_>>()
        .join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    fn q(rules: &[(Role, u32)]) -> Vec<QuorumRule> {
        rules
            .iter()
            .map(|(role, count)| QuorumRule {
                role: *role,
                count: *count,
            })
            .collect()
    }

    #[test]
    fn two_operators_and_one_admin() {
        let rules = q(&[(Operator, 2), (Admin, 1)]);
        assert!(!met(&rules, &[]));
        assert!(!met(&rules, &[Operator, Operator]));
        assert!(!met(&rules, &[Operator, Admin]));
        assert!(met(&rules, &[Operator, Operator, Admin]));
        // Admins fill operator slots, but each reviewer fills only one slot.
        assert!(met(&rules, &[Admin, Admin, Admin]));
        assert!(!met(&rules, &[Admin, Admin]));
        assert!(met(&rules, &[Operator, Admin, Admin]));
        // Read-only and auditor reviewers fill nothing here.
        assert!(!met(&rules, &[ReadOnly, Auditor, Admin]));
    }

    #[test]
    fn default_one_operator() {
        let rules = q(&[(Operator, 1)]);
        assert!(met(&rules, &[Operator]));
        assert!(met(&rules, &[Admin]));
        assert!(!met(&rules, &[Auditor]));
        assert!(eligible(&rules, Operator) && eligible(&rules, Admin));
        assert!(!eligible(&rules, ReadOnly) && !eligible(&rules, Auditor));
    }

    #[test]
    fn met_agrees_with_a_brute_force_assignment() {
        // Every multiset of up to 4 reviewers against a few rule sets.
        let roles = [ReadOnly, Auditor, Operator, Admin];
        let sets = [
            q(&[(Operator, 2), (Admin, 1)]),
            q(&[(Auditor, 1), (Operator, 1)]),
            q(&[(Admin, 2)]),
            q(&[(ReadOnly, 1), (Operator, 1), (Admin, 1)]),
        ];
        fn brute(slots: &[Role], reviewers: &[Role]) -> bool {
            let Some((first, rest)) = slots.split_first() else {
                return true;
            };
            (0..reviewers.len()).any(|i| {
                let r = reviewers[i];
                (r == *first || r == Admin) && {
                    let mut left = reviewers.to_vec();
                    left.remove(i);
                    brute(rest, &left)
                }
            })
        }
        for rules in &sets {
            let slots: Vec<Role> = rules
                .iter()
                .flat_map(|r| std::iter::repeat_n(r.role, r.count as usize))
                .collect();
            for n in 0..=4u32 {
                for code in 0..4u32.pow(n) {
                    let reviewers: Vec<Role> = (0..n)
                        .map(|i| roles[((code / 4u32.pow(i)) % 4) as usize])
                        .collect();
                    assert_eq!(
                        met(rules, &reviewers),
                        brute(&slots, &reviewers),
                        "{rules:?} {reviewers:?}"
                    );
                }
            }
        }
    }
}
