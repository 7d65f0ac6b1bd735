//! The byte pump's sans-IO state machine (`reactor::pipe::Pipe` over a `PipeIo`)
//! with two sides held in memory.
//!
//! Input: a byte limit (or none), the peers' actions in any order (send bytes,
//! half-close, open the receive window by n bytes, reset), spurious readiness
//! events, and `stop`. Properties:
//! - in each direction the receiver's peer gets a prefix of what the sender's
//!   peer sent, in order, nothing duplicated or invented (cut at the limit, if
//!   one is set), and a write shutdown (end of file) only after every byte that
//!   direction will ever deliver; what a side sent before it reset is still
//!   delivered;
//! - a write queue never holds more than the high watermark plus one read;
//! - `handle` counts at least the bytes it took out of kernel buffers and queues,
//!   and re-queued reads come to an end;
//! - at the end, when both peers half-close and take everything, the pipe is
//!   `Done` with every byte delivered (cut at the limit), or, after a reset,
//!   `Lingering`/`Done` with the healthy side complete, and `is_delivered_with`
//!   agrees with the acknowledgements.
#![no_main]

use std::collections::VecDeque;
use std::io;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor::pipe::{DOWN, Pipe, PipeIo, PipeStatus, Readiness, UP};

const HIGH: usize = 64;
const LOW: usize = 16;
const BUDGET: usize = 32;

#[derive(Default, Debug)]
struct Side {
    /// Everything its peer sent, in order (for the checks).
    sent: Vec<u8>,
    /// Sent by the peer, in our kernel, not read yet.
    kernel_in: VecDeque<u8>,
    peer_eof: bool,
    reset: bool,
    error_pending: bool,
    write_fails: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    room: usize,
    /// What its peer received.
    delivered: Vec<u8>,
    /// `delivered.len()` when the write side was shut down.
    shut_at: Option<usize>,
    shut_requested: bool,
    eof: bool,
    paused: bool,
    no_acks: bool,
    /// Bytes dropped on purpose (input with nowhere to go, a failed side's queue,
    /// what is past the limit).
    dropped: usize,
}

impl Side {
    fn take(&mut self, keep: bool) -> (io::Result<bool>, bool) {
        let n = self.kernel_in.len().min(BUDGET);
        let bytes: Vec<u8> = self.kernel_in.drain(..n).collect();
        if keep {
            self.rbuf.extend_from_slice(&bytes);
        } else {
            self.dropped += n;
        }
        if !self.kernel_in.is_empty() {
            return (Ok(false), true);
        }
        if self.error_pending {
            self.error_pending = false;
            return (Err(io::ErrorKind::ConnectionReset.into()), false);
        }
        if self.peer_eof || self.reset {
            self.eof = true;
        }
        (Ok(self.eof), false)
    }

    fn write_out(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            if self.shut_requested && self.shut_at.is_none() {
                self.shut_at = Some(self.delivered.len());
            }
            return Ok(());
        }
        if self.write_fails {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = self.room.min(self.wbuf.len());
        self.delivered.extend(self.wbuf.drain(..n));
        self.room -= n;
        assert!(self.shut_at.is_none(), "bytes after the end of file");
        if self.wbuf.is_empty() && self.shut_requested {
            self.shut_at = Some(self.delivered.len());
        }
        Ok(())
    }
}

#[derive(Default)]
struct Mem {
    sides: [Side; 2],
    requeued: VecDeque<usize>,
    peak: usize,
}

impl PipeIo for Mem {
    fn read(&mut self, side: usize) -> io::Result<bool> {
        let s = &mut self.sides[side];
        if s.eof || s.paused {
            return Ok(s.eof);
        }
        let (r, again) = s.take(true);
        if again {
            self.requeued.push_back(side);
        }
        r
    }
    fn buffered(&self, side: usize) -> usize {
        self.sides[side].rbuf.len()
    }
    fn forward(&mut self, from: usize, n: usize) {
        let bytes = std::mem::take(&mut self.sides[from].rbuf);
        assert!(n <= bytes.len(), "forward {n} of {}", bytes.len());
        self.sides[from].dropped += bytes.len() - n;
        let to = &mut self.sides[1 - from];
        to.wbuf.extend_from_slice(&bytes[..n]);
        self.peak = self.peak.max(to.wbuf.len());
    }
    fn discard(&mut self, side: usize) -> io::Result<bool> {
        let s = &mut self.sides[side];
        s.rbuf.clear();
        if s.eof {
            return Ok(true);
        }
        let (r, again) = s.take(false);
        if again {
            self.requeued.push_back(side);
        }
        r
    }
    fn flush(&mut self, side: usize) -> io::Result<()> {
        self.sides[side].write_out()
    }
    fn shutdown(&mut self, side: usize) -> io::Result<()> {
        self.sides[side].shut_requested = true;
        self.sides[side].write_out()
    }
    fn queued(&self, side: usize) -> usize {
        self.sides[side].wbuf.len()
    }
    fn is_congested(&self, side: usize) -> bool {
        self.sides[side].wbuf.len() >= HIGH
    }
    fn pause(&mut self, side: usize) {
        self.sides[side].paused = true;
    }
    fn resume(&mut self, side: usize) {
        if std::mem::take(&mut self.sides[side].paused) {
            self.requeued.push_back(side);
        }
    }
    fn is_paused(&self, side: usize) -> bool {
        self.sides[side].paused
    }
    fn clear_queue(&mut self, side: usize) {
        let s = &mut self.sides[side];
        s.dropped += s.wbuf.len();
        s.wbuf.clear();
    }
    fn read_again(&mut self, side: usize) {
        self.requeued.push_back(side);
    }
    fn take_error(&mut self, side: usize) -> Option<io::Error> {
        let s = &mut self.sides[side];
        std::mem::take(&mut s.error_pending).then(|| io::ErrorKind::ConnectionReset.into())
    }
    fn is_write_shut(&self, side: usize) -> bool {
        self.sides[side].shut_at.is_some()
    }
    fn unacked(&self, side: usize) -> io::Result<usize> {
        let s = &self.sides[side];
        Ok(if s.no_acks {
            s.delivered.len() + usize::from(s.shut_at.is_some())
        } else {
            0
        })
    }
}

#[derive(Arbitrary, Debug)]
enum Step<'a> {
    Send(bool, &'a [u8]),
    Fin(bool),
    Window(bool, u8),
    Reset(bool),
    Spurious(bool, bool, bool, bool),
    NoAcks(bool, bool),
    Stop,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    limit: Option<u16>,
    room: [u8; 2],
    steps: Vec<Step<'a>>,
}

struct Rig {
    pipe: Pipe,
    io: Mem,
    limit: u64,
    stopped: bool,
}

impl Rig {
    fn ev(&mut self, s: usize, r: Readiness) {
        // Bytes held in kernels and queues, plus those dropped so far.
        let held = |io: &Mem| -> isize {
            io.sides
                .iter()
                .map(|x| (x.kernel_in.len() + x.wbuf.len()) as isize + x.dropped as isize)
                .sum::<isize>()
        };
        let before = held(&self.io);
        let moved = self.pipe.handle(&mut self.io, s, r);
        let after = held(&self.io);
        // Bytes taken from a kernel buffer or a queue, and not dropped, were
        // counted as moved.
        assert!(
            moved as isize >= before - after,
            "moved {moved}, {before} -> {after}"
        );
        for _ in 0..100_000 {
            let Some(s) = self.io.requeued.pop_front() else {
                self.check();
                return;
            };
            self.pipe.handle(
                &mut self.io,
                s,
                Readiness {
                    read: true,
                    write: false,
                    error: false,
                },
            );
        }
        panic!("re-queued reads never end");
    }

    /// The receiver of direction `d` is side `1 - d`; its peer got a prefix of
    /// what side `d`'s peer sent.
    fn check(&self) {
        assert!(self.io.peak < HIGH + BUDGET, "queue held {}", self.io.peak);
        for d in [UP, DOWN] {
            let sent = &self.io.sides[d].sent;
            let got = &self.io.sides[1 - d].delivered;
            assert!(
                got.len() <= sent.len(),
                "direction {d}: more delivered than sent"
            );
            assert_eq!(&sent[..got.len()], &got[..], "direction {d}: bytes changed");
            if self.limit > 0 {
                assert!(
                    got.len() as u64 <= self.limit,
                    "direction {d} over the limit"
                );
            }
            assert!(self.pipe.bytes(d) as usize >= got.len());
        }
    }

    fn readiness(read: bool, write: bool, error: bool) -> Readiness {
        Readiness { read, write, error }
    }
}

fuzz_target!(|i: Input<'_>| {
    let limit = i.limit.map_or(0, |l| u64::from(l) + 1);
    let mut rig = Rig {
        pipe: Pipe::with_limit(LOW, limit),
        io: Mem::default(),
        limit,
        stopped: false,
    };
    for s in [UP, DOWN] {
        rig.io.sides[s].room = usize::from(i.room[s]);
    }
    for step in i.steps.iter().take(300) {
        match *step {
            Step::Send(s, bytes) => {
                let s = usize::from(s);
                let side = &mut rig.io.sides[s];
                if side.peer_eof || side.reset {
                    continue;
                }
                side.sent.extend_from_slice(bytes);
                side.kernel_in.extend(bytes);
                rig.ev(s, Rig::readiness(true, false, false));
            }
            Step::Fin(s) => {
                let s = usize::from(s);
                rig.io.sides[s].peer_eof = true;
                rig.ev(s, Rig::readiness(true, false, false));
            }
            Step::Window(s, n) => {
                let s = usize::from(s);
                let side = &mut rig.io.sides[s];
                side.room = side.room.saturating_add(usize::from(n));
                rig.ev(s, Rig::readiness(false, true, false));
            }
            Step::Reset(s) => {
                let s = usize::from(s);
                let side = &mut rig.io.sides[s];
                if side.reset {
                    continue;
                }
                side.reset = true;
                side.error_pending = true;
                side.write_fails = true;
                rig.ev(s, Rig::readiness(true, true, true));
            }
            Step::Spurious(s, r, w, e) => {
                // Readiness without a change: nothing may move that could not.
                rig.ev(
                    usize::from(s),
                    Rig::readiness(r, w, e && rig.io.sides[usize::from(s)].reset),
                );
            }
            Step::NoAcks(s, yes) => rig.io.sides[usize::from(s)].no_acks = yes,
            Step::Stop => {
                rig.pipe.stop_with(&mut rig.io);
                rig.stopped = true;
                rig.check();
            }
        }
    }
    // The end: both peers half-close and take everything.
    for s in [UP, DOWN] {
        rig.io.sides[s].peer_eof = true;
        rig.io.sides[s].room = usize::MAX;
    }
    for _ in 0..4 {
        for s in [UP, DOWN] {
            rig.ev(s, Rig::readiness(true, true, false));
        }
    }
    let shut = [rig.io.is_write_shut(UP), rig.io.is_write_shut(DOWN)];
    let status = rig.pipe.status(shut);
    let failed = [rig.pipe.has_failed(UP), rig.pipe.has_failed(DOWN)];
    for d in [UP, DOWN] {
        let to = 1 - d;
        let sent = rig.io.sides[d].sent.len() as u64;
        let want = if limit > 0 { sent.min(limit) } else { sent };
        let got = &rig.io.sides[to];
        if failed[to] {
            continue;
        }
        if rig.stopped {
            // Stopped: what was read is delivered, the rest stays in the kernel;
            // the end of file still comes after it.
            assert!(
                got.shut_at.is_some(),
                "direction {d}: no end of file after stop"
            );
            assert_eq!(got.shut_at, Some(got.delivered.len()));
            continue;
        }
        assert_eq!(
            got.delivered.len() as u64,
            want,
            "direction {d}: bytes lost"
        );
        assert_eq!(
            got.shut_at,
            Some(got.delivered.len()),
            "direction {d}: end of file missing or early"
        );
    }
    if failed == [false, false] {
        assert_eq!(status, PipeStatus::Done);
    } else {
        assert!(
            matches!(status, PipeStatus::Done | PipeStatus::Lingering),
            "{status:?}"
        );
        if status == PipeStatus::Lingering {
            let acked = (0..2).all(|s| failed[s] || !rig.io.sides[s].no_acks);
            assert_eq!(rig.pipe.is_delivered_with(&rig.io), acked);
        }
    }
});
