//! Runs a plan over a transport.
//!
//! Per step: local copies and reductions first, then every send and receive of
//! the step is driven at once (full duplex), each peer's messages in plan
//! order. Payloads stream in `chunk_bytes` pieces, so a receiver reduces the
//! first piece while the next is in flight, and a receive-and-reduce folds the
//! transport's bytes straight into the destination (no staging copy).
//!
//! Every message starts with a header carrying the call's fingerprint (kind,
//! dtype, op, root, count, sequence number) and the payload length; a receiver
//! that expected something else fails with a mismatch error naming both sides
//! instead of reading corrupt data. Waiting is bounded: when no byte moves for
//! the configured timeout, the call fails naming the peers it waited for.

use std::time::{Duration, Instant};

use braid_topologies::{Action, BufferId, Plan, Region};
use braid_transports::{Transport, TransportError};

use crate::dtype::{reduce_bytes_into, reduce_into, DType, Element, ReduceOp};
use crate::{Error, ErrorKind, Result};

const MAGIC: u32 = 0x4252_4431; // "BRD1"
pub(crate) const HEADER_BYTES: usize = 40;
/// Payloads up to this many bytes are received with their header in one
/// transport call once the whole message is there.
const WHOLE_MESSAGE_MAX: usize = 256;

/// What every rank taking part in one call agrees on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// Index into [`CALL_NAMES`].
    pub call: u8,
    pub dtype: DType,
    /// 0 when the call does not reduce.
    pub op: u8,
    pub root: u32,
    pub count: u64,
    pub seq: u64,
}

/// Names of the calls, indexed by [`Fingerprint::call`].
pub(crate) const CALL_NAMES: [&str; 16] = [
    "broadcast",
    "reduce",
    "all_reduce",
    "scatter",
    "gather",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "barrier",
    "scatter_v",
    "gather_v",
    "all_gather_v",
    "reduce_scatter_v",
    "all_to_all_v",
    "send",
    "send_recv",
];

pub(crate) fn call_code(name: &str) -> u8 {
    // A match, not a search of CALL_NAMES: this runs on every call.
    let code = match name {
        "broadcast" => 0,
        "reduce" => 1,
        "all_reduce" => 2,
        "scatter" => 3,
        "gather" => 4,
        "all_gather" => 5,
        "reduce_scatter" => 6,
        "all_to_all" => 7,
        "barrier" => 8,
        "scatter_v" => 9,
        "gather_v" => 10,
        "all_gather_v" => 11,
        "reduce_scatter_v" => 12,
        "all_to_all_v" => 13,
        "send" => 14,
        "send_recv" => 15,
        _ => 0,
    };
    debug_assert_eq!(
        CALL_NAMES[code as usize], name,
        "CALL_NAMES and call_code disagree"
    );
    code
}

impl Fingerprint {
    fn encode(&self, payload_bytes: u64) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = self.call;
        h[5] = self.dtype.code();
        h[6] = self.op;
        h[8..12].copy_from_slice(&self.root.to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.seq.to_le_bytes());
        h[32..40].copy_from_slice(&payload_bytes.to_le_bytes());
        h
    }

    /// Decodes a header; `None` if it is not one.
    fn decode(h: &[u8; HEADER_BYTES]) -> Option<(Fingerprint, u64)> {
        let word =
            |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or([0; 8]));
        if u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != MAGIC {
            return None;
        }
        let fp = Fingerprint {
            call: h[4],
            dtype: DType::from_code(h[5])?,
            op: h[6],
            root: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
            count: word(16..24),
            seq: word(24..32),
        };
        Some((fp, word(32..40)))
    }

    fn describe(&self) -> String {
        let name = CALL_NAMES
            .get(self.call as usize)
            .unwrap_or(&"unknown call");
        let mut s = format!("{name} #{} ({}, count {}", self.seq, self.dtype, self.count);
        if let Some(op) = ReduceOp::from_code(self.op) {
            s.push_str(&format!(", op {op}"));
        }
        if matches!(
            *name,
            "broadcast" | "reduce" | "scatter" | "gather" | "scatter_v" | "gather_v"
        ) {
            s.push_str(&format!(", root {}", self.root));
        }
        s.push(')');
        s
    }
}

/// The caller's buffers for one plan.
pub(crate) struct Buffers<'a, T> {
    pub input: &'a [T],
    pub output: &'a mut [T],
    pub scratch: &'a mut [T],
}

impl<T: Element> Buffers<'_, T> {
    fn read(&self, r: Region) -> &[T] {
        let (a, b) = (r.offset as usize, r.end() as usize);
        match r.buf {
            BufferId::Input => &self.input[a..b],
            BufferId::Output => &self.output[a..b],
            BufferId::Scratch => &self.scratch[a..b],
        }
    }

    fn write(&mut self, r: Region) -> Result<&mut [T]> {
        let (a, b) = (r.offset as usize, r.end() as usize);
        match r.buf {
            BufferId::Input => Err(internal("a plan writes into the send buffer")),
            BufferId::Output => Ok(&mut self.output[a..b]),
            BufferId::Scratch => Ok(&mut self.scratch[a..b]),
        }
    }

    /// `src` to read and `dst` to write at once; they do not overlap.
    fn pair(&mut self, src: Region, dst: Region) -> Result<(&[T], &mut [T])> {
        if src.buf == dst.buf {
            let buf: &mut [T] = match dst.buf {
                BufferId::Input => return Err(internal("a plan writes into the send buffer")),
                BufferId::Output => self.output,
                BufferId::Scratch => self.scratch,
            };
            let (s, d) = (src.offset as usize, dst.offset as usize);
            let len = dst.len as usize;
            if s < d {
                let (lo, hi) = buf.split_at_mut(d);
                Ok((&lo[s..s + len], &mut hi[..len]))
            } else {
                let (lo, hi) = buf.split_at_mut(s);
                Ok((&hi[..len], &mut lo[d..d + len]))
            }
        } else {
            let (src_slice, dst_slice): (&[T], &mut [T]) = match (src.buf, dst.buf) {
                (_, BufferId::Input) => return Err(internal("a plan writes into the send buffer")),
                (BufferId::Input, BufferId::Output) => (self.input, self.output),
                (BufferId::Input, BufferId::Scratch) => (self.input, self.scratch),
                (BufferId::Output, BufferId::Scratch) => (self.output, self.scratch),
                (BufferId::Scratch, BufferId::Output) => (self.scratch, self.output),
                (BufferId::Output, BufferId::Output) | (BufferId::Scratch, BufferId::Scratch) => {
                    unreachable!("same-buffer pairs are split above")
                }
            };
            Ok((
                &src_slice[src.offset as usize..src.end() as usize],
                &mut dst_slice[dst.offset as usize..dst.end() as usize],
            ))
        }
    }
}

fn internal(what: &str) -> Error {
    Error::new(
        ErrorKind::Transport,
        format!("internal error: {what}; this is a braid bug, please report it"),
    )
}

/// How a run is tuned.
pub(crate) struct RunOptions {
    pub op: ReduceOp,
    pub timeout: Duration,
    pub chunk_bytes: usize,
}

struct PendingSend {
    peer: usize,
    region: Region,
    header: [u8; HEADER_BYTES],
    /// Bytes handed over, header included.
    sent: usize,
}

struct PendingRecv {
    peer: usize,
    region: Region,
    reduce: bool,
    header: [u8; HEADER_BYTES],
    header_got: usize,
    /// Payload bytes landed.
    got: usize,
}

/// Runs `plan` on `transport` with `bufs`. Headers of sent messages carry
/// `sent`; received headers must equal `expected` (the same fingerprint for a
/// collective; the peer's view for point-to-point calls).
pub(crate) fn run_plan<T: Element>(
    transport: &mut dyn Transport,
    plan: &Plan,
    bufs: Buffers<'_, T>,
    sent: &Fingerprint,
    expected: &Fingerprint,
    opts: &RunOptions,
) -> Result<()> {
    // The per-step lists live on between calls: small calls allocate nothing.
    let result = WORK.with(|w| match w.try_borrow_mut() {
        Ok(mut w) => run_steps_with(&mut w, transport, plan, bufs, sent, expected, opts),
        // Only a call made from inside a call (a sink re-entering braid)
        // finds the lists taken: it gets its own.
        Err(_) => run_steps_with(
            &mut Work::default(),
            transport,
            plan,
            bufs,
            sent,
            expected,
            opts,
        ),
    });
    if result.is_err() {
        // The caller gets its buffers back: no peer may read them in place.
        transport.abandon();
    }
    result
}

/// The executor's lists, reused from call to call on each thread.
#[derive(Default)]
struct Work {
    sends: Vec<PendingSend>,
    recvs: Vec<PendingRecv>,
    busy_stamp: Vec<u64>,
}

thread_local! {
    static WORK: std::cell::RefCell<Work> = std::cell::RefCell::new(Work::default());
}

fn run_steps_with<T: Element>(
    work: &mut Work,
    transport: &mut dyn Transport,
    plan: &Plan,
    mut bufs: Buffers<'_, T>,
    sent: &Fingerprint,
    expected: &Fingerprint,
    opts: &RunOptions,
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let chunk = (opts.chunk_bytes / size).max(1) * size;
    let Work {
        sends,
        recvs,
        busy_stamp,
    } = work;
    // Marks a peer whose earlier message in this step is still moving, so that
    // each direction's messages go strictly in plan order.
    busy_stamp.clear();
    busy_stamp.resize(plan.nranks, 0);
    let mut pass: u64 = 0;

    for (step_index, step) in plan.steps.iter().enumerate() {
        sends.clear();
        recvs.clear();
        for action in &step.actions {
            match *action {
                Action::Copy { src, dst } => {
                    let (s, d) = bufs.pair(src, dst)?;
                    d.copy_from_slice(s);
                }
                Action::Reduce { src, dst } => {
                    let (s, d) = bufs.pair(src, dst)?;
                    reduce_into(opts.op, d, s);
                }
                Action::Send { peer, src } => sends.push(PendingSend {
                    peer,
                    region: src,
                    header: sent.encode(src.len * size as u64),
                    sent: 0,
                }),
                Action::Recv { peer, dst } | Action::RecvReduce { peer, dst } => {
                    recvs.push(PendingRecv {
                        peer,
                        region: dst,
                        reduce: matches!(action, Action::RecvReduce { .. }),
                        header: [0; HEADER_BYTES],
                        header_got: 0,
                        got: 0,
                    })
                }
            }
        }

        // Set on the first pass that moves nothing, cleared by progress: the
        // clock is read only while waiting, not on every busy pass.
        let mut deadline: Option<Instant> = None;
        // Whether this idle spell already had its brief, clock-free wait.
        let mut waited_briefly = false;
        loop {
            pass += 1;
            let mut progressed = false;
            let mut all_done = true;
            for s in sends.iter_mut() {
                let payload_len = s.region.len as usize * size;
                if s.sent == HEADER_BYTES + payload_len {
                    continue;
                }
                if busy_stamp[s.peer] == pass {
                    all_done = false;
                    continue;
                }
                let payload: &[u8] = bytemuck::cast_slice(bufs.read(s.region));
                while s.sent < HEADER_BYTES + payload_len {
                    let taken = if s.sent < HEADER_BYTES {
                        let first = payload_len.min(chunk);
                        transport.send(s.peer, &[&s.header[s.sent..], &payload[..first]])
                    } else {
                        let at = s.sent - HEADER_BYTES;
                        let end = payload_len.min(at + chunk);
                        transport.send(s.peer, &[&payload[at..end]])
                    }
                    .map_err(|e| transport_error(e, plan, step_index))?;
                    if taken == 0 {
                        break;
                    }
                    s.sent += taken;
                    progressed = true;
                }
                if s.sent < HEADER_BYTES + payload_len {
                    // Still moving: later messages to this peer wait.
                    busy_stamp[s.peer] = pass;
                    all_done = false;
                }
            }
            pass += 1;
            for r in recvs.iter_mut() {
                let payload_len = r.region.len as usize * size;
                if r.header_got == HEADER_BYTES && r.got == payload_len {
                    continue;
                }
                if busy_stamp[r.peer] == pass {
                    all_done = false;
                    continue;
                }
                'this_message: {
                    if r.header_got == 0 && payload_len <= WHOLE_MESSAGE_MAX {
                        // A small message is taken whole when it is all there:
                        // one transport call instead of one for the header and
                        // one for the payload.
                        let whole = HEADER_BYTES + payload_len;
                        let dst = bufs.write(r.region)?;
                        let (reduce, peer) = (r.reduce, r.peer);
                        let mut checked = Ok(());
                        let n = transport
                            .recv(r.peer, whole, whole, &mut |b| {
                                let Some(header) = b.first_chunk::<HEADER_BYTES>() else {
                                    checked = Err(internal("a transport split a whole message"));
                                    return;
                                };
                                checked = check_header(header, expected, peer, payload_len);
                                if checked.is_err() {
                                    return;
                                }
                                let payload = &b[HEADER_BYTES..];
                                if payload.len() != payload_len {
                                    checked = Err(internal("a transport split a whole message"));
                                } else if reduce {
                                    reduce_bytes_into(opts.op, dst, payload);
                                } else {
                                    bytemuck::cast_slice_mut::<T, u8>(dst).copy_from_slice(payload);
                                }
                            })
                            .map_err(|e| transport_error(e, plan, step_index))?;
                        checked?;
                        if n == whole {
                            r.header_got = HEADER_BYTES;
                            r.got = payload_len;
                            progressed = true;
                            break 'this_message;
                        }
                    }
                    if r.header_got < HEADER_BYTES {
                        let (header, got) = (&mut r.header, &mut r.header_got);
                        let n = transport
                            .recv(r.peer, HEADER_BYTES - *got, 1, &mut |b| {
                                header[*got..*got + b.len()].copy_from_slice(b);
                                *got += b.len();
                            })
                            .map_err(|e| transport_error(e, plan, step_index))?;
                        if n > 0 {
                            progressed = true;
                        }
                        if r.header_got < HEADER_BYTES {
                            break 'this_message;
                        }
                        check_header(&r.header, expected, r.peer, payload_len)?;
                    }
                    if r.got < payload_len && !r.reduce {
                        // A plain copy: the transport writes straight into place.
                        let dst: &mut [u8] = bytemuck::cast_slice_mut(bufs.write(r.region)?);
                        let n = transport
                            .recv_into(r.peer, &mut dst[r.got..])
                            .map_err(|e| transport_error(e, plan, step_index))?;
                        r.got += n;
                        progressed |= n > 0;
                    } else if r.got < payload_len {
                        let dst = bufs.write(r.region)?;
                        let (reduce, got) = (r.reduce, &mut r.got);
                        let n = transport
                            .recv(r.peer, payload_len - *got, size, &mut |b| {
                                let at = *got / size;
                                let d = &mut dst[at..at + b.len() / size];
                                if reduce {
                                    reduce_bytes_into(opts.op, d, b);
                                } else {
                                    bytemuck::cast_slice_mut::<T, u8>(d).copy_from_slice(b);
                                }
                                *got += b.len();
                            })
                            .map_err(|e| transport_error(e, plan, step_index))?;
                        if n > 0 {
                            progressed = true;
                        }
                    }
                }
                if r.header_got < HEADER_BYTES || r.got < payload_len {
                    // Still waiting on this peer: later receives from it wait too.
                    busy_stamp[r.peer] = pass;
                    all_done = false;
                }
            }
            if all_done {
                break;
            }
            if progressed {
                deadline = None;
                waited_briefly = false;
                continue;
            }
            if !waited_briefly {
                // A message already on its way usually lands within this
                // brief wait, which spares the clock read a deadline costs.
                waited_briefly = true;
                if transport.wait_briefly() {
                    continue;
                }
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + opts.timeout);
            if now >= deadline {
                return Err(timeout_error(
                    sends,
                    recvs,
                    plan,
                    step_index,
                    opts.timeout,
                    size,
                ));
            }
            transport
                .wait(deadline)
                .map_err(|e| transport_error(e, plan, step_index))?;
        }
    }
    Ok(())
}

fn check_header(
    header: &[u8; HEADER_BYTES],
    expected: &Fingerprint,
    peer: usize,
    payload_len: usize,
) -> Result<()> {
    let Some((theirs, bytes)) = Fingerprint::decode(header) else {
        return Err(Error::new(
            ErrorKind::Transport,
            format!(
                "rank {peer} sent bytes that are not a braid message header; \
                 the stream is corrupt or something else wrote to it"
            ),
        )
        .with_peers(vec![peer]));
    };
    if theirs != *expected || bytes != payload_len as u64 {
        let ours = if expected.call == call_code("send") {
            // Point-to-point: what this rank expects is a receive.
            expected.describe().replacen("send", "recv", 1)
        } else {
            expected.describe()
        };
        let mut msg = format!(
            "rank {peer} is in {} but this rank called {ours}",
            theirs.describe()
        );
        if theirs == *expected {
            msg = format!(
                "rank {peer} sent {bytes} bytes where this rank expected {payload_len} in {}",
                expected.describe()
            );
        }
        msg.push_str("; every rank must make the same collective calls, in the same order, with matching counts, dtype, op and root");
        return Err(Error::new(ErrorKind::Mismatch, msg).with_peers(vec![peer]));
    }
    Ok(())
}

fn transport_error(e: TransportError, plan: &Plan, step: usize) -> Error {
    let (kind, peer) = match e {
        TransportError::PeerClosed { peer } => (ErrorKind::PeerFailed, peer),
        TransportError::NoSuchPeer { peer, .. } => (ErrorKind::InvalidArgument, peer),
        TransportError::Io { peer, .. } => (ErrorKind::Transport, peer),
        TransportError::Setup { .. } => {
            return Error::new(
                ErrorKind::Transport,
                format!(
                    "{e} (step {} of {}, algorithm {})",
                    step + 1,
                    plan.steps.len(),
                    plan.algorithm
                ),
            );
        }
    };
    Error::new(
        kind,
        format!(
            "{e} (step {} of {}, algorithm {}); the job cannot complete this call: \
             check that rank {peer} is alive, then recreate the communicator",
            step + 1,
            plan.steps.len(),
            plan.algorithm
        ),
    )
    .with_peers(vec![peer])
}

fn timeout_error(
    sends: &[PendingSend],
    recvs: &[PendingRecv],
    plan: &Plan,
    step: usize,
    timeout: Duration,
    size: usize,
) -> Error {
    let mut peers = Vec::new();
    let mut parts = Vec::new();
    for r in recvs {
        if r.header_got < HEADER_BYTES || r.got < r.region.len as usize * size {
            parts.push(format!("receiving from rank {}", r.peer));
            peers.push(r.peer);
        }
    }
    for s in sends {
        if s.sent < HEADER_BYTES + s.region.len as usize * size {
            parts.push(format!("sending to rank {}", s.peer));
            peers.push(s.peer);
        }
    }
    peers.sort_unstable();
    peers.dedup();
    Error::new(
        ErrorKind::Timeout,
        format!(
            "no progress for {:.1} s ({}) in step {} of {} (algorithm {}); ranks {:?} did not answer: \
             they may have stopped, crashed or called a different collective; \
             raise BRAID_TIMEOUT if they are only slow",
            timeout.as_secs_f64(),
            parts.join(", "),
            step + 1,
            plan.steps.len(),
            plan.algorithm,
            peers
        ),
    )
    .with_peers(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_garbage() {
        let fp = Fingerprint {
            call: call_code("all_reduce"),
            dtype: DType::BF16,
            op: ReduceOp::Max.code(),
            root: 7,
            count: (1 << 40) + 3,
            seq: 99,
        };
        let h = fp.encode(12345);
        assert_eq!(Fingerprint::decode(&h), Some((fp, 12345)));
        assert_eq!(Fingerprint::decode(&[0xAB; HEADER_BYTES]), None);
        assert!(fp
            .describe()
            .contains("all_reduce #99 (bf16, count 1099511627779, op max"));
    }
}
