//! Tracker announce responses, read as they arrive.
//!
//! Input: one byte choosing how the response is cut into reads, then the raw
//! HTTP response. Properties: feeding it read by read, every call before the
//! response is complete says "need more" and the first complete answer is the
//! one the whole buffer gives (with the same length); `parse_response` agrees with
//! `parse_response_partial`; an accepted response keeps its limits (peer count,
//! no port 0, text lengths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::tracker::{self, MAX_PEERS, MAX_TEXT_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let whole = tracker::parse_response_partial(buf);
    let closed = tracker::parse_response(buf);
    match (&whole, &closed) {
        (Ok(Some((a, _))), Ok(b)) => assert_eq!(a, b),
        (Ok(None), Err(tracker::TrackerError::Truncated)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        other => panic!("partial and closed parses disagree: {other:?}"),
    }

    // Reads of `step` bytes (1..=16, or eighths of the buffer).
    let step = match sel % 24 {
        s @ 0..16 => usize::from(s) + 1,
        s => (buf.len() / (usize::from(s) - 15)).max(1),
    };
    let mut end = 0;
    let mut first = None;
    while end < buf.len() {
        end = (end + step).min(buf.len());
        match tracker::parse_response_partial(&buf[..end]) {
            Ok(None) => continue,
            other => {
                first = Some((end, other));
                break;
            }
        }
    }
    match (first, &whole) {
        (None, Ok(None)) => {}
        (Some((_, Ok(Some(got)))), Ok(Some(want))) => {
            assert_eq!(&got, want, "incremental and whole parses differ");
            assert!(got.1 <= buf.len());
        }
        // An error may be found on a prefix (a bad status line is refused before
        // its end of line arrives); then the whole buffer is refused too.
        (Some((_, Err(_))), Err(_)) => {}
        (first, whole) => panic!("incremental {first:?} vs whole {whole:?}"),
    }

    if let Ok(Some((r, n))) = &whole {
        // The response's own bytes are enough, and what follows is not read.
        assert_eq!(
            tracker::parse_response_partial(&buf[..*n]).unwrap(),
            Some((r.clone(), *n))
        );
        assert!(r.peers.len() <= MAX_PEERS);
        assert!(r.peers.iter().all(|p| p.port() != 0));
        assert!(
            r.tracker_id
                .as_ref()
                .is_none_or(|t| t.len() <= MAX_TEXT_LEN)
        );
        // Lossy UTF-8 of at most MAX_TEXT_LEN bytes: at most 3 bytes per input byte.
        assert!(
            r.warning
                .as_ref()
                .is_none_or(|w| w.len() <= 3 * MAX_TEXT_LEN)
        );
    }
});
