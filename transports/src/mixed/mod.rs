//! One rank's peers reached through different transports: shared memory to
//! the ranks on this host, TCP to the others.
//!
//! [`MixedTransport`] routes every `send` and `recv` to the transport that
//! serves the peer. Waiting is the one subtle part: the shared-memory
//! transport sleeps on a futex and TCP on epoll, and one thread cannot sleep
//! on both. `wait` therefore gives each transport one turn of a slice and
//! returns, and the caller looks at its streams again (a transport's `wait`
//! does not say whether it saw something or ran out its slice). The slice
//! starts at [`FIRST_SLICE`] (each transport spins first, so a busy exchange
//! never sleeps), doubles with every wait up to [`MAX_SLICE`], and starts
//! over whenever bytes move. An idle rank thus notices new data within about
//! `MAX_SLICE` on the transport it is not sleeping on, and never burns a
//! core while it waits.
//!
//! ```
//! use braid_transports::local;
//! use braid_transports::mixed::MixedTransport;
//! use braid_transports::Transport;
//!
//! // Ranks 0 and 1 of 2 in one process, the single peer through "local".
//! let mut ends = local::endpoints(2, 1 << 16);
//! let (t1, t0) = (ends.pop().unwrap(), ends.pop().unwrap());
//! let mut a = MixedTransport::new(0, 2, vec![(Box::new(t0) as Box<dyn Transport>, vec![1])])?;
//! let mut b = MixedTransport::new(1, 2, vec![(Box::new(t1) as Box<dyn Transport>, vec![0])])?;
//! assert_eq!(a.send(1, &[b"hi"])?, 2);
//! let mut got = Vec::new();
//! b.recv(0, 2, 1, &mut |bytes| got.extend_from_slice(bytes))?;
//! assert_eq!(got, b"hi");
//! # Ok::<(), braid_transports::TransportError>(())
//! ```

use std::time::{Duration, Instant};

use crate::{MemoryKind, Transport, TransportError};

/// The first slice a waiting rank gives each transport.
pub const FIRST_SLICE: Duration = Duration::from_micros(50);
/// The longest slice: the worst extra delay an idle rank adds to a message
/// arriving on the transport it is not sleeping on.
pub const MAX_SLICE: Duration = Duration::from_millis(1);

/// Peers split over several transports. See the module docs.
pub struct MixedTransport {
    rank: usize,
    size: usize,
    parts: Vec<Box<dyn Transport>>,
    /// Index into `parts` for each peer; `None` for this rank.
    route: Vec<Option<usize>>,
    /// How long the next wait gives each transport: short while bytes move,
    /// doubling while they do not.
    slice: Duration,
}

impl MixedTransport {
    /// Routes each peer of `rank` (in a group of `size`) to the transport
    /// listed with it. Every other rank must appear in exactly one list, and
    /// every transport must have this rank and size.
    pub fn new(
        rank: usize,
        size: usize,
        parts: Vec<(Box<dyn Transport>, Vec<usize>)>,
    ) -> Result<Self, TransportError> {
        let setup = |reason: String| TransportError::Setup { reason };
        let mut route = vec![None; size];
        let mut transports = Vec::with_capacity(parts.len());
        for (i, (t, peers)) in parts.into_iter().enumerate() {
            if t.rank() != rank || t.size() != size {
                return Err(setup(format!(
                    "the {} transport is rank {} of {}, not rank {rank} of {size}",
                    t.name(),
                    t.rank(),
                    t.size()
                )));
            }
            for p in peers {
                if p >= size {
                    return Err(TransportError::NoSuchPeer { peer: p, size });
                }
                if p == rank || route[p].is_some() {
                    return Err(setup(format!(
                        "rank {p} is routed twice or is this rank ({rank})"
                    )));
                }
                route[p] = Some(i);
            }
            transports.push(t);
        }
        if let Some(p) = (0..size).find(|&p| p != rank && route[p].is_none()) {
            return Err(setup(format!("no transport reaches rank {p}")));
        }
        Ok(MixedTransport {
            rank,
            size,
            parts: transports,
            route,
            slice: FIRST_SLICE,
        })
    }

    /// The name of the transport that reaches `peer`.
    pub fn transport_of(&self, peer: usize) -> Option<&'static str> {
        self.route
            .get(peer)
            .copied()
            .flatten()
            .map(|i| self.parts[i].name())
    }

    fn part(&mut self, peer: usize) -> Result<&mut Box<dyn Transport>, TransportError> {
        match self.route.get(peer) {
            Some(Some(i)) => Ok(&mut self.parts[*i]),
            Some(None) => Err(TransportError::Io {
                peer,
                reason: format!("rank {peer} is this rank: no transport leads to itself"),
            }),
            None => Err(TransportError::NoSuchPeer {
                peer,
                size: self.size,
            }),
        }
    }
}

impl Transport for MixedTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn name(&self) -> &'static str {
        "mixed"
    }

    fn link_kind(&self, peer: usize) -> &'static str {
        match self.route.get(peer).copied().flatten() {
            Some(i) => self.parts[i].link_kind(peer),
            None => self.name(),
        }
    }

    fn memory(&self) -> MemoryKind {
        MemoryKind::Host
    }

    fn send(&mut self, peer: usize, parts: &[&[u8]]) -> Result<usize, TransportError> {
        let n = self.part(peer)?.send(peer, parts)?;
        if n > 0 {
            self.slice = FIRST_SLICE;
        }
        Ok(n)
    }

    fn recv(
        &mut self,
        peer: usize,
        max: usize,
        granule: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, TransportError> {
        let n = self.part(peer)?.recv(peer, max, granule, sink)?;
        if n > 0 {
            self.slice = FIRST_SLICE;
        }
        Ok(n)
    }

    fn recv_into(&mut self, peer: usize, dst: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.part(peer)?.recv_into(peer, dst)?;
        if n > 0 {
            self.slice = FIRST_SLICE;
        }
        Ok(n)
    }

    fn abandon(&mut self) {
        for t in &mut self.parts {
            t.abandon();
        }
    }

    fn wait_briefly(&mut self) -> bool {
        // With several parts a spin on one would miss the others' arrivals.
        match self.parts.as_mut_slice() {
            [only] => only.wait_briefly(),
            _ => false,
        }
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), TransportError> {
        if let [only] = self.parts.as_mut_slice() {
            return only.wait(deadline);
        }
        // One turn each, then back to the caller, which looks at every
        // stream again: a transport's wait cannot say whether it saw
        // something or ran out its slice, so the caller's look decides.
        for t in &mut self.parts {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            t.wait((now + self.slice).min(deadline))?;
        }
        self.slice = (self.slice * 2).min(MAX_SLICE);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::endpoints;

    /// Four ranks as two "hosts" {0, 1} and {2, 3}: a `near` group for the
    /// pairs on one host and a `far` group for the pairs across.
    fn two_hosts() -> Vec<MixedTransport> {
        let near = endpoints(4, 1 << 10);
        let far = endpoints(4, 1 << 10);
        near.into_iter()
            .zip(far)
            .enumerate()
            .map(|(r, (n, f))| {
                let host = r / 2;
                let (same, other): (Vec<usize>, Vec<usize>) =
                    (0..4).filter(|&p| p != r).partition(|&p| p / 2 == host);
                MixedTransport::new(
                    r,
                    4,
                    vec![
                        (Box::new(n) as Box<dyn Transport>, same),
                        (Box::new(f) as Box<dyn Transport>, other),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn every_pair_exchanges_through_its_own_transport() {
        let handles: Vec<_> = two_hosts()
            .into_iter()
            .map(|mut t| {
                std::thread::spawn(move || {
                    let r = t.rank();
                    let len = 5000; // larger than a pair's capacity: takes turns
                    let msg = |from: usize, to: usize| -> Vec<u8> {
                        (0..len).map(|i| (from * 31 + to * 7 + i) as u8).collect()
                    };
                    let peers: Vec<usize> = (0..4).filter(|&p| p != r).collect();
                    let out: Vec<Vec<u8>> = peers.iter().map(|&p| msg(r, p)).collect();
                    let mut sent = [0usize; 3];
                    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 3];
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while sent.iter().any(|&s| s < len) || got.iter().any(|g| g.len() < len) {
                        let mut moved = false;
                        for (i, &p) in peers.iter().enumerate() {
                            if sent[i] < len {
                                let n = t.send(p, &[&out[i][sent[i]..]]).unwrap();
                                sent[i] += n;
                                moved |= n > 0;
                            }
                            let g = &mut got[i];
                            if g.len() == len {
                                continue;
                            }
                            let n = t
                                .recv(p, len - g.len(), 1, &mut |b| g.extend_from_slice(b))
                                .unwrap();
                            moved |= n > 0;
                        }
                        assert!(Instant::now() < deadline, "rank {r} stuck");
                        if !moved {
                            t.wait(deadline).unwrap();
                        }
                    }
                    for (i, &p) in peers.iter().enumerate() {
                        assert_eq!(got[i], msg(p, r), "rank {r} from {p}");
                    }
                    assert_eq!(t.transport_of(r), None);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_sleeping_rank_wakes_for_either_transport() {
        for far_peer in [false, true] {
            let mut ts = two_hosts();
            let mut waiter = ts.remove(0);
            let mut sender = if far_peer { ts.remove(1) } else { ts.remove(0) };
            let from = sender.rank();
            let h = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(sender.send(0, &[b"x"]).unwrap(), 1);
                sender
            });
            let start = Instant::now();
            let deadline = start + Duration::from_secs(10);
            let mut got = 0;
            while got == 0 && Instant::now() < deadline {
                waiter.wait(deadline).unwrap();
                got = waiter.recv(from, 1, 1, &mut |_| {}).unwrap();
            }
            let waited = start.elapsed();
            assert_eq!(got, 1, "nothing from rank {from}");
            assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
            drop(h.join().unwrap());
        }
    }

    #[test]
    fn bad_routes_are_refused() {
        let mk = || endpoints(3, 64).into_iter().next().unwrap();
        let e = |parts| MixedTransport::new(0, 3, parts).err().unwrap().to_string();
        assert!(e(vec![(Box::new(mk()) as Box<dyn Transport>, vec![1])])
            .contains("no transport reaches rank 2"));
        assert!(
            e(vec![(Box::new(mk()) as Box<dyn Transport>, vec![1, 2, 1])]).contains("routed twice")
        );
        assert!(
            e(vec![(Box::new(mk()) as Box<dyn Transport>, vec![1, 5])]).contains("does not exist")
        );
        let mut ok = MixedTransport::new(
            0,
            3,
            vec![(Box::new(mk()) as Box<dyn Transport>, vec![1, 2])],
        )
        .unwrap();
        assert!(ok.send(0, &[b"x"]).is_err());
        assert!(matches!(
            ok.send(9, &[b"x"]),
            Err(TransportError::NoSuchPeer { .. })
        ));
    }
}
