//! The in-process transport: ranks are threads of one process.
//!
//! Each ordered pair of ranks has a FIFO of byte buffers guarded by a mutex;
//! the receiver lends the front buffer to the executor's sink (no staging
//! copy) and returns the emptied buffer to a free list the sender reuses, so a
//! steady stream allocates nothing. A per-pair byte cap gives back-pressure,
//! so a rank that stops receiving stalls its senders instead of growing
//! memory without bound. Waiting spins briefly, then sleeps on a condition
//! variable, so ranks that outnumber cores do not burn them.
//!
//! Dropping an endpoint marks its rank closed: peers waiting on it get
//! [`TransportError::PeerClosed`] instead of waiting for their deadline.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::{Transport, TransportError};

/// Default bytes queued per ordered pair before the sender is told to wait.
pub const DEFAULT_PAIR_CAPACITY: usize = 8 << 20;

#[derive(Default)]
struct Channel {
    queue: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already lent out.
    front_consumed: usize,
    queued_bytes: usize,
    free: Vec<Vec<u8>>,
}

/// Wakes one rank's waiting thread. `generation` counts rings; `sleepers`
/// lets a ring skip the mutex when nobody sleeps.
#[derive(Default)]
struct Doorbell {
    generation: AtomicU64,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.lock);
            self.cv.notify_all();
        }
    }
}

struct Shared {
    nranks: usize,
    capacity: usize,
    /// Index `src * nranks + dst`.
    channels: Vec<Mutex<Channel>>,
    bells: Vec<Doorbell>,
    alive: Vec<AtomicBool>,
}

/// The longest a wait spins (and yields) before it sleeps on the condvar.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

impl Shared {
    fn channel(&self, src: usize, dst: usize) -> MutexGuard<'_, Channel> {
        lock(&self.channels[src * self.nranks + dst])
    }
}

/// A mutex guard even if another rank's thread panicked while holding it: the
/// channel's state is updated in single statements, so it stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One rank's end of an in-process group. Create a group with [`endpoints`].
pub struct LocalEndpoint {
    rank: usize,
    shared: Arc<Shared>,
    seen_generation: u64,
}

/// `nranks` connected endpoints, one per rank, each queueing at most
/// `pair_capacity` bytes per peer (see [`DEFAULT_PAIR_CAPACITY`]).
pub fn endpoints(nranks: usize, pair_capacity: usize) -> Vec<LocalEndpoint> {
    let shared = Arc::new(Shared {
        nranks,
        capacity: pair_capacity.max(1),
        channels: (0..nranks * nranks)
            .map(|_| Mutex::new(Channel::default()))
            .collect(),
        bells: (0..nranks).map(|_| Doorbell::default()).collect(),
        alive: (0..nranks).map(|_| AtomicBool::new(true)).collect(),
    });
    (0..nranks)
        .map(|rank| LocalEndpoint {
            rank,
            shared: Arc::clone(&shared),
            seen_generation: 0,
        })
        .collect()
}

impl LocalEndpoint {
    fn check_peer(&self, peer: usize) -> Result<(), TransportError> {
        if peer >= self.shared.nranks {
            return Err(TransportError::NoSuchPeer {
                peer,
                size: self.shared.nranks,
            });
        }
        Ok(())
    }

    fn peer_alive(&self, peer: usize) -> bool {
        self.shared.alive[peer].load(Ordering::SeqCst)
    }
}

impl Transport for LocalEndpoint {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.nranks
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        self.check_peer(peer)?;
        if !self.peer_alive(peer) {
            return Err(TransportError::PeerClosed { peer });
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        // Take a recycled buffer outside the copy, then copy without the lock.
        let mut buf = {
            let mut ch = self.shared.channel(self.rank, peer);
            if ch.queued_bytes >= self.shared.capacity {
                return Ok(0);
            }
            ch.free.pop().unwrap_or_default()
        };
        buf.clear();
        buf.reserve(total);
        for part in parts {
            buf.extend_from_slice(part);
        }
        {
            let mut ch = self.shared.channel(self.rank, peer);
            ch.queued_bytes += total;
            ch.queue.push_back(buf);
        }
        self.shared.bells[peer].ring();
        Ok(total)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        self.check_peer(peer)?;
        let granule = granule.max(1);
        let mut lent = 0usize;
        while max - lent >= granule {
            // Only this rank pops from this channel, so the front buffer can be
            // taken out and lent without holding the lock during the copy.
            let (buf, consumed) = {
                let mut ch = self.shared.channel(peer, self.rank);
                // A partial element split over two buffers: join them first.
                while ch.queue.len() > 1 && ch.queue[0].len() - ch.front_consumed < granule {
                    let consumed = ch.front_consumed;
                    let mut head = ch.queue.pop_front().unwrap_or_default();
                    head.drain(..consumed);
                    let next = ch.queue.pop_front().unwrap_or_default();
                    head.extend_from_slice(&next);
                    ch.queue.push_front(head);
                    ch.front_consumed = 0;
                }
                match ch.queue.pop_front() {
                    Some(buf) => (buf, ch.front_consumed),
                    None => break,
                }
            };
            let available = buf.len() - consumed;
            let take = (available.min(max - lent) / granule) * granule;
            if take > 0 {
                sink(&buf[consumed..consumed + take]);
            }
            lent += take;
            let finished = consumed + take == buf.len();
            {
                let mut ch = self.shared.channel(peer, self.rank);
                ch.queued_bytes -= take;
                if finished {
                    ch.front_consumed = 0;
                    if ch.free.len() < 4 {
                        ch.free.push(buf);
                    }
                } else {
                    ch.front_consumed = consumed + take;
                    ch.queue.push_front(buf);
                }
            }
            if take == 0 || !finished {
                break;
            }
        }
        if lent > 0 {
            // Space was freed: the sender may be waiting for it.
            self.shared.bells[peer].ring();
        } else if !self.peer_alive(peer) && self.shared.channel(peer, self.rank).queue.is_empty() {
            return Err(TransportError::PeerClosed { peer });
        }
        Ok(lent)
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        let bell = &self.shared.bells[self.rank];
        let changed = |seen: u64| bell.generation.load(Ordering::SeqCst) != seen;
        // Spin a little: a peer thread on another core usually answers within
        // microseconds, far sooner than a sleep and wake-up. Bounded by time
        // as well as by count: on a loaded machine each yield can give the
        // core away for a whole time slice, and a hundred of them once made
        // waits end 50-140 ms past their deadline.
        let spin_until = (Instant::now() + SPIN).min(deadline);
        for i in 0..200u32 {
            if changed(self.seen_generation) {
                break;
            }
            if i % 8 == 7 && Instant::now() >= spin_until {
                break;
            }
            if i < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if !changed(self.seen_generation) {
            bell.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = lock(&bell.lock);
            while !changed(self.seen_generation) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                guard = match bell.cv.wait_timeout(guard, deadline - now) {
                    Ok((g, _)) => g,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            drop(guard);
            bell.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        self.seen_generation = bell.generation.load(Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        self.shared.alive[self.rank].store(false, Ordering::SeqCst);
        for bell in &self.shared.bells {
            bell.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drain(ep: &mut LocalEndpoint, peer: usize, max: usize, granule: usize) -> Vec<u8> {
        let mut got = Vec::new();
        ep.recv(peer, max, granule, &mut |b| got.extend_from_slice(b))
            .unwrap();
        got
    }

    #[test]
    fn bytes_arrive_in_order_and_whole_elements() {
        let mut eps = endpoints(2, 1024);
        let (a, b) = eps.split_at_mut(1);
        assert_eq!(a[0].send(1, &[&[1, 2, 3], &[4, 5]]).unwrap(), 5);
        assert_eq!(a[0].send(1, &[&[6, 7, 8]]).unwrap(), 3);
        // Granule 4: 4 bytes, then 4 more (joined across buffers).
        assert_eq!(drain(&mut b[0], 0, 4, 4), vec![1, 2, 3, 4]);
        assert_eq!(drain(&mut b[0], 0, 100, 4), vec![5, 6, 7, 8]);
        assert!(drain(&mut b[0], 0, 100, 1).is_empty());
    }

    #[test]
    fn a_full_pair_refuses_more_until_drained() {
        let mut eps = endpoints(2, 8);
        let (a, b) = eps.split_at_mut(1);
        assert_eq!(a[0].send(1, &[&[0; 8]]).unwrap(), 8);
        assert_eq!(a[0].send(1, &[&[0; 8]]).unwrap(), 0);
        assert_eq!(drain(&mut b[0], 0, 8, 1).len(), 8);
        assert_eq!(a[0].send(1, &[&[0; 8]]).unwrap(), 8);
    }

    #[test]
    fn a_dropped_peer_is_reported_not_waited_for() {
        let mut eps = endpoints(2, 64);
        let gone = eps.pop().unwrap();
        drop(gone);
        let ep = &mut eps[0];
        let err = ep.recv(1, 8, 1, &mut |_| {}).unwrap_err();
        assert_eq!(err, TransportError::PeerClosed { peer: 1 });
        assert_eq!(
            ep.send(1, &[&[1]]).unwrap_err(),
            TransportError::PeerClosed { peer: 1 }
        );
        assert!(matches!(
            ep.send(5, &[&[1]]),
            Err(TransportError::NoSuchPeer { peer: 5, size: 2 })
        ));
    }

    #[test]
    fn wait_returns_at_its_deadline() {
        let mut eps = endpoints(2, 64);
        let start = Instant::now();
        eps[0].wait(start + Duration::from_millis(30)).unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn wait_wakes_when_a_peer_sends() {
        let mut eps = endpoints(2, 64);
        let mut sender = eps.pop().unwrap();
        let mut receiver = eps.pop().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sender.send(0, &[&[42]]).unwrap();
            sender
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.is_empty() {
            receiver.wait(deadline).unwrap();
            assert!(Instant::now() < deadline, "no wake-up before the deadline");
            receiver
                .recv(1, 1, 1, &mut |b| got.extend_from_slice(b))
                .unwrap();
        }
        assert_eq!(got, vec![42]);
        drop(t.join().unwrap());
    }
}
