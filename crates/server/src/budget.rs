//! Memory budgets shared by all connections, with a share per principal,
//! so that one token's connections can never hold all of a budget and
//! stall everyone else: bytes of partly received packets, and chunk and
//! list data read for a peer but not yet sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets count KiB.
pub(crate) const UNIT: usize = hoard_transport::BUDGET_UNIT;

pub(crate) struct Budget {
    total: Arc<Semaphore>,
    share_units: usize,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Budget {
    /// `total_bytes` for everyone, at most `total_bytes / 4` (and at least
    /// `min_bytes`, the largest single reservation) per principal.
    pub fn new(total_bytes: usize, min_bytes: usize) -> Budget {
        let total_units = (total_bytes / UNIT).max(min_bytes.div_ceil(UNIT));
        Budget {
            total: Arc::new(Semaphore::new(total_units)),
            share_units: (total_units / 4).max(min_bytes.div_ceil(UNIT)),
            shares: Mutex::new(HashMap::new()),
        }
    }

    /// The semaphores a reservation of `principal` takes from, in order:
    /// its share, then the total.
    pub fn for_principal(&self, principal: &str) -> Vec<Arc<Semaphore>> {
        let mut shares = self.shares.lock().expect("lock poisoned");
        let share = shares
            .entry(principal.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share_units)))
            .clone();
        vec![share, self.total.clone()]
    }
}

/// Budget held while some bytes are in memory; released on drop.
pub(crate) struct Reservation(Vec<OwnedSemaphorePermit>);

impl Reservation {
    /// Takes `bytes` from each of `budgets`, in order, waiting for room.
    pub async fn take(budgets: &[Arc<Semaphore>], bytes: usize) -> Reservation {
        let units = bytes.div_ceil(UNIT) as u32;
        let mut held = Vec::with_capacity(budgets.len());
        for b in budgets {
            held.push(
                b.clone()
                    .acquire_many_owned(units)
                    .await
                    .expect("a budget semaphore is never closed"),
            );
        }
        Reservation(held)
    }

    /// Takes `bytes` from each of `budgets` if there is room now, without
    /// waiting. A task that already holds a reservation must use this for
    /// the next one: waiting while holding could deadlock with other
    /// tasks doing the same.
    pub fn try_take(budgets: &[Arc<Semaphore>], bytes: usize) -> Option<Reservation> {
        let units = bytes.div_ceil(UNIT) as u32;
        let mut held = Vec::with_capacity(budgets.len());
        for b in budgets {
            held.push(b.clone().try_acquire_many_owned(units).ok()?);
        }
        Some(Reservation(held))
    }

    /// Gives back what `bytes` does not need of the reservation.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT) as u32;
        for p in &mut self.0 {
            let excess = p.num_permits().saturating_sub(keep as usize);
            if excess > 0 {
                drop(p.split(excess));
            }
        }
    }

    /// `data` as `Bytes` that keep the reservation until the last copy
    /// is dropped (after the writer sent it).
    pub fn attach(mut self, data: Vec<u8>) -> Bytes {
        self.shrink_to(data.len());
        Bytes::from_owner(Held {
            data,
            _budget: self,
        })
    }
}

struct Held {
    data: Vec<u8>,
    _budget: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_keep_one_principal_from_taking_everything() {
        let b = Budget::new(64 * UNIT, 8 * UNIT);
        let mallory = b.for_principal("mallory");
        let held = Reservation::take(&mallory, 16 * UNIT).await;
        // Mallory's share (a quarter) is spent; alice still gets room.
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            Reservation::take(&mallory, UNIT),
        )
        .await;
        assert!(more.is_err());
        let alice = b.for_principal("alice");
        let _a = Reservation::take(&alice, 16 * UNIT).await;
        assert!(Reservation::try_take(&mallory, UNIT).is_none());
        drop(held);
        let _m = Reservation::take(&mallory, UNIT).await;
        assert!(Reservation::try_take(&mallory, UNIT).is_some());
    }

    #[tokio::test]
    async fn attached_bytes_hold_the_budget_until_dropped() {
        let b = Budget::new(64 * UNIT, 16 * UNIT);
        let p = b.for_principal("p");
        let r = Reservation::take(&p, 16 * UNIT).await;
        let bytes = r.attach(vec![7u8; 3 * UNIT]);
        assert_eq!(p[0].available_permits(), 16 - 3);
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(p[0].available_permits(), 13);
        assert_eq!(copy.len(), 3 * UNIT);
        drop(copy);
        assert_eq!(p[0].available_permits(), 16);
    }
}
