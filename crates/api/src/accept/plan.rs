//! The decisions of a group commit, as functions of the group's rows alone
//! (no database, no channels): who claims an idempotency key and who follows
//! it, which rows to store, which keys to forget or look up afterwards, and
//! what each request is told. The group commit (the parent module) only
//! carries them out.

use std::collections::HashMap;

use kurir_store::idempotency::Key;

/// What a row of a group is to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// No key.
    Free,
    /// The first row of the group with its key: it claims the key.
    Claimer,
    /// A later row with the key of the row at this position: it shares that
    /// row's fate (the same request sent twice at once).
    Follower(usize),
}

/// Each row's role, in order: the first row with a key claims it, a later
/// row with the same key follows the first.
pub(super) fn roles<'a>(keys: impl IntoIterator<Item = Option<&'a Key>>) -> Vec<Role> {
    let mut claimer_of: HashMap<&Key, usize> = HashMap::new();
    keys.into_iter()
        .enumerate()
        .map(|(position, key)| match key {
            None => Role::Free,
            Some(key) => match claimer_of.get(key) {
                Some(first) => Role::Follower(*first),
                None => {
                    claimer_of.insert(key, position);
                    Role::Claimer
                }
            },
        })
        .collect()
}

/// The claimers' positions, in order: the rows whose keys are claimed, and
/// the order of `held` in the functions below.
pub(super) fn claimers(roles: &[Role]) -> Vec<usize> {
    roles
        .iter()
        .enumerate()
        .filter(|(_, role)| **role == Role::Claimer)
        .map(|(position, _)| position)
        .collect()
}

/// Which rows to store: every row without a key, and each claimer whose
/// claim held (`held`: one per claimer, in order); a follower never (its
/// first row is stored for it).
pub(super) fn storing(roles: &[Role], held: &[bool]) -> Vec<bool> {
    let mut held = held.iter();
    roles
        .iter()
        .map(|role| match role {
            Role::Free => true,
            Role::Claimer => *held.next().unwrap_or(&false),
            Role::Follower(_) => false,
        })
        .collect()
}

/// What to do about keys once the rows are in (positions of rows).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct KeysAfter {
    /// Claimed, but the row was not stored (its user does not exist): the
    /// key must not outlive the request, so the client may send it again.
    pub forget: Vec<usize>,
    /// Taken by an earlier request: its first response is looked up, in
    /// this order.
    pub look_up: Vec<usize>,
}

/// Which claimed keys to forget and which to look up, given whether each
/// claim held and whether each row was stored.
pub(super) fn keys_after(roles: &[Role], held: &[bool], stored: &[bool]) -> KeysAfter {
    let mut after = KeysAfter::default();
    for (position, held) in claimers(roles).into_iter().zip(held) {
        if !held {
            after.look_up.push(position);
        } else if !stored[position] {
            after.forget.push(position);
        }
    }
    after
}

/// What a row's request is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Whatever the INSERT did: stored (202), or not, its user missing (404).
    Inserted,
    /// Its key was taken by an earlier request: that request's response,
    /// the `n`th looked up ([`KeysAfter::look_up`]), or 409 if it is gone.
    Replay(usize),
    /// The same request as the row at this position (same key, same
    /// fingerprint): the same answer, as a replay if that row was stored.
    SameAs(usize),
    /// The key of the row at this position with another request: 422.
    Different(usize),
}

/// Each row's verdict. `same_request(me, first)` compares two rows'
/// requests (their fingerprints).
pub(super) fn verdicts(
    roles: &[Role],
    held: &[bool],
    same_request: impl Fn(usize, usize) -> bool,
) -> Vec<Verdict> {
    let mut held = held.iter();
    let mut looked_up = 0;
    roles
        .iter()
        .enumerate()
        .map(|(position, role)| match role {
            Role::Free => Verdict::Inserted,
            Role::Claimer => {
                if *held.next().unwrap_or(&false) {
                    Verdict::Inserted
                } else {
                    looked_up += 1;
                    Verdict::Replay(looked_up - 1)
                }
            }
            Role::Follower(first) => {
                if same_request(position, *first) {
                    Verdict::SameAs(*first)
                } else {
                    Verdict::Different(*first)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kurir_core::AccountId;
    use kurir_store::idempotency::Scope;

    use super::*;

    fn key(name: &str) -> Key {
        Key {
            account: AccountId(1),
            scope: Scope::Request,
            key: name.into(),
        }
    }

    #[test]
    fn rows_without_keys_are_all_free_and_all_stored() {
        let roles = roles([None, None]);
        assert_eq!(roles, [Role::Free, Role::Free]);
        assert_eq!(storing(&roles, &[]), [true, true]);
        assert_eq!(verdicts(&roles, &[], |_, _| true), [Verdict::Inserted; 2]);
        assert_eq!(
            keys_after(&roles, &[], &[true, false]),
            KeysAfter::default()
        );
    }

    #[test]
    fn the_first_row_with_a_key_claims_it_and_a_later_one_follows_it() {
        let (a, b) = (key("a"), key("b"));
        let roles = roles([Some(&a), None, Some(&b), Some(&a)]);
        assert_eq!(
            roles,
            [Role::Claimer, Role::Free, Role::Claimer, Role::Follower(0)]
        );
        assert_eq!(claimers(&roles), [0, 2]);
    }

    #[test]
    fn a_claim_that_held_is_stored_and_one_taken_is_not_and_its_first_response_is_looked_up() {
        let (a, b) = (key("a"), key("b"));
        let roles = roles([Some(&a), Some(&b)]);
        let held = [true, false];
        assert_eq!(storing(&roles, &held), [true, false]);
        let after = keys_after(&roles, &held, &[true, false]);
        assert_eq!(after.look_up, [1]);
        assert!(after.forget.is_empty());
        assert_eq!(
            verdicts(&roles, &held, |_, _| true),
            [Verdict::Inserted, Verdict::Replay(0)]
        );
    }

    #[test]
    fn a_held_key_whose_row_was_not_stored_is_forgotten_so_it_can_be_sent_again() {
        let a = key("a");
        let roles = roles([Some(&a)]);
        let after = keys_after(&roles, &[true], &[false]);
        assert_eq!(after.forget, [0]);
        assert!(after.look_up.is_empty());
    }

    #[test]
    fn a_follower_is_never_stored_and_shares_its_first_rows_fate_if_it_is_the_same_request() {
        let a = key("a");
        let roles = roles([Some(&a), Some(&a), Some(&a)]);
        assert_eq!(storing(&roles, &[true]), [true, false, false]);
        // Row 2 carries another request under the same key.
        let verdicts = verdicts(&roles, &[true], |me, _| me != 2);
        assert_eq!(
            verdicts,
            [Verdict::Inserted, Verdict::SameAs(0), Verdict::Different(0)]
        );
    }

    #[test]
    fn replays_are_numbered_in_the_order_their_keys_are_looked_up() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let roles = roles([Some(&a), Some(&b), Some(&c)]);
        let held = [false, true, false];
        assert_eq!(
            keys_after(&roles, &held, &[false, true, false]).look_up,
            [0, 2]
        );
        assert_eq!(
            verdicts(&roles, &held, |_, _| true),
            [Verdict::Replay(0), Verdict::Inserted, Verdict::Replay(1)]
        );
    }
}
