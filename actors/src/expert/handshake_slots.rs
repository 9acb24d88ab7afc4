//! Handshake slots of an expert node: how many unauthenticated connections it holds, per
//! source address and in all, and which one gives way when a new one arrives.
//!
//! Decides: no connection is refused for want of a slot. A new connection from an address
//! that already holds [`HANDSHAKES_PER_ADDR_MAX`] handshakes ends that address's oldest one;
//! when all [`HANDSHAKES_IN_FLIGHT_MAX`] are taken, the oldest handshake of the address holding
//! the most gives way. So strangers at one address can never hold more than their own quota
//! (peers at other addresses always get in), and even at the router's own address a flood of
//! idle connections cannot keep a router out: its fresh connection evicts the oldest idle one
//! and finishes its handshake (a few round trips) long before it is the oldest itself; the
//! router retries within its connect window if it ever is. Silent connections also end after
//! `HANDSHAKE_HELLO_TIMEOUT_MS` (enforced by the handshake).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Handshakes in progress at once, over all source addresses.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 64;
/// Handshakes in progress at once from one source IP address.
pub const HANDSHAKES_PER_ADDR_MAX: usize = 8;

/// The handshakes in progress, by source address, oldest first.
#[derive(Default)]
pub struct HandshakeSlots {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_addr: HashMap<IpAddr, VecDeque<(u64, Arc<Notify>)>>,
}

impl Inner {
    fn total(&self) -> usize {
        self.by_addr.values().map(VecDeque::len).sum()
    }

    /// Ends the oldest handshake of `addr`.
    fn evict_oldest(&mut self, addr: IpAddr) {
        let Some(queue) = self.by_addr.get_mut(&addr) else {
            return;
        };
        if let Some((_, evicted)) = queue.pop_front() {
            evicted.notify_one();
        }
        if queue.is_empty() {
            self.by_addr.remove(&addr);
        }
    }
}

/// One connection's handshake slot; frees itself when dropped.
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    addr: IpAddr,
    id: u64,
    evicted: Arc<Notify>,
}

impl HandshakeSlot {
    /// Resolves when a newer connection has taken this slot: the handshake must end.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if let Some(queue) = inner.by_addr.get_mut(&self.addr) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                inner.by_addr.remove(&self.addr);
            }
        }
    }
}

impl HandshakeSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `addr`, ending an older handshake when the address
    /// or the node is at its limit. Returns what was evicted, for the log.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> (HandshakeSlot, Option<&'static str>) {
        let mut inner = self.lock();
        let mut evicted = None;
        if inner.by_addr.get(&addr).map_or(0, VecDeque::len) >= HANDSHAKES_PER_ADDR_MAX {
            inner.evict_oldest(addr);
            evicted = Some("HANDSHAKES_PER_ADDR_MAX");
        } else if inner.total() >= HANDSHAKES_IN_FLIGHT_MAX {
            let busiest = inner
                .by_addr
                .iter()
                .max_by_key(|(_, queue)| queue.len())
                .map(|(&busiest, _)| busiest);
            if let Some(busiest) = busiest {
                inner.evict_oldest(busiest);
            }
            evicted = Some("HANDSHAKES_IN_FLIGHT_MAX");
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let notify = Arc::new(Notify::new());
        inner
            .by_addr
            .entry(addr)
            .or_default()
            .push_back((id, notify.clone()));
        (
            HandshakeSlot {
                slots: self.clone(),
                addr,
                id,
                evicted: notify,
            },
            evicted,
        )
    }

    /// Handshakes in progress from `addr`.
    #[cfg(test)]
    fn held_by(&self, addr: IpAddr) -> usize {
        self.lock().by_addr.get(&addr).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    async fn is_evicted(slot: &HandshakeSlot) -> bool {
        tokio::time::timeout(Duration::from_millis(20), slot.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn one_address_never_holds_more_than_its_quota_and_loses_its_oldest() {
        let slots = Arc::new(HandshakeSlots::default());
        let held: Vec<_> = (0..HANDSHAKES_PER_ADDR_MAX)
            .map(|_| slots.admit(ip(1)).0)
            .collect();
        let (newest, evicted) = slots.admit(ip(1));
        assert_eq!(evicted, Some("HANDSHAKES_PER_ADDR_MAX"));
        assert_eq!(slots.held_by(ip(1)), HANDSHAKES_PER_ADDR_MAX);
        assert!(is_evicted(&held[0]).await, "the oldest gives way");
        assert!(!is_evicted(&held[1]).await);
        assert!(!is_evicted(&newest).await, "the newcomer keeps its slot");
        // Another address is untouched by the first one's flood.
        let (other, evicted) = slots.admit(ip(2));
        assert_eq!(evicted, None);
        assert!(!is_evicted(&other).await);
    }

    #[tokio::test]
    async fn when_full_the_busiest_address_gives_way() {
        let slots = Arc::new(HandshakeSlots::default());
        let mut held = Vec::new();
        // Fill every slot: 8 addresses x 8, the first address's oldest admitted first.
        for a in 0..(HANDSHAKES_IN_FLIGHT_MAX / HANDSHAKES_PER_ADDR_MAX) as u8 {
            for _ in 0..HANDSHAKES_PER_ADDR_MAX {
                held.push((a, slots.admit(ip(a)).0));
            }
        }
        // Free one of address 1's so that address 0 is strictly the busiest.
        let pos = held.iter().position(|(a, _)| *a == 1).unwrap();
        held.remove(pos);
        let (_s, _) = slots.admit(ip(200));
        let (fresh, evicted) = slots.admit(ip(201));
        assert_eq!(evicted, Some("HANDSHAKES_IN_FLIGHT_MAX"));
        assert!(!is_evicted(&fresh).await);
        let evicted_addrs: Vec<u8> = {
            let mut v = Vec::new();
            for (a, slot) in &held {
                if is_evicted(slot).await {
                    v.push(*a);
                }
            }
            v
        };
        assert_eq!(evicted_addrs.len(), 1);
        assert_ne!(evicted_addrs[0], 1, "address 1 held fewer than the others");
    }

    #[tokio::test]
    async fn a_finished_handshake_frees_its_slot() {
        let slots = Arc::new(HandshakeSlots::default());
        let (slot, _) = slots.admit(ip(1));
        assert_eq!(slots.held_by(ip(1)), 1);
        drop(slot);
        assert_eq!(slots.held_by(ip(1)), 0);
    }
}
