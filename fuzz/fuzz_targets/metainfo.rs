//! `.torrent` parsing: whatever is accepted is consistent and safe to use.
//!
//! Input: the file's bytes. Properties of an accepted torrent: the info-hash is
//! the SHA-1 of the raw `info` bytes; file offsets are contiguous and sum to the
//! total; the piece count matches the total; every piece's file spans are in
//! order, inside their files and add up to the piece length; no path can leave
//! the download directory; `build_torrent` with the parsed fields produces a
//! torrent that parses back to the same fields; the raw info dictionary kept for
//! BEP 9 is the file's, parses alone (`from_info_dict`) to the same torrent, and
//! written back (`to_torrent_file`) keeps the info-hash and the tracker.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::bencode;
use reactor_bittorrent::metainfo::{self, Metainfo};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Metainfo::parse(data) else {
        return;
    };
    let raw = bencode::find_raw(data, b"info").unwrap().unwrap();
    assert_eq!(m.info_hash, metainfo::sha1(raw));
    // The raw info dictionary (what BEP 9 serves) is kept byte for byte; parsed
    // alone it is the same torrent, and written back as a file it keeps the hash.
    assert_eq!(m.info_dict, raw);
    let alone = Metainfo::from_info_dict(&m.info_dict).expect("the info dict parses alone");
    assert_eq!(alone.info_hash, m.info_hash);
    assert_eq!((&alone.files, &alone.pieces), (&m.files, &m.pieces));
    assert_eq!(alone.announce, None);
    let file = m.to_torrent_file(m.announce.as_deref());
    let back = Metainfo::parse(&file).expect("a written torrent file parses");
    assert_eq!(back.info_hash, m.info_hash);
    assert_eq!(back.announce, m.announce);

    let mut offset = 0u64;
    for f in &m.files {
        assert_eq!(f.offset, offset);
        offset += f.length;
        assert_eq!(f.path.is_empty(), !m.multi_file);
    }
    assert_eq!(offset, m.total_length);
    assert!(m.total_length > 0);
    let count = m.total_length.div_ceil(u64::from(m.piece_length));
    assert_eq!(count, m.pieces.len() as u64);
    assert_eq!(u64::from(m.piece_count()), count);
    assert_eq!(m.piece_len(m.piece_count()), None);
    assert!(m.piece_hash(m.piece_count()).is_none());

    // Spans of (a bounded number of) pieces, first and last included.
    let n = m.piece_count();
    let sample = (0..n.min(64)).chain(n.saturating_sub(64).max(64)..n);
    for piece in sample {
        let len = m.piece_len(piece).unwrap();
        assert!(len > 0 && len <= m.piece_length);
        let start = m.piece_offset(piece).unwrap();
        let mut pos = start;
        let mut total = 0u64;
        let mut last_file = None;
        for span in m.file_spans(piece) {
            let f = &m.files[span.file_index];
            assert!(
                last_file.is_none_or(|l| span.file_index > l),
                "spans in file order"
            );
            last_file = Some(span.file_index);
            assert!(span.len > 0);
            assert_eq!(f.offset + span.offset, pos, "spans are contiguous");
            assert!(span.offset + u64::from(span.len) <= f.length);
            pos += u64::from(span.len);
            total += u64::from(span.len);
        }
        assert_eq!(total, u64::from(len), "piece {piece}");
    }

    // Paths stay under the download directory.
    for i in 0..m.files.len() {
        let p = m.relative_path(i).unwrap();
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{p:?}"
        );
        assert_eq!(p.components().count(), 1 + m.files[i].path.len());
    }

    // The parsed fields are valid input for the encoder, and survive it.
    let files: Vec<(Vec<String>, u64)> =
        m.files.iter().map(|f| (f.path.clone(), f.length)).collect();
    let built = metainfo::build_torrent(
        &m.name,
        &files,
        m.piece_length,
        &m.pieces,
        m.announce.as_deref(),
    )
    .expect("a parsed torrent can be rebuilt");
    let again = Metainfo::parse(&built).expect("a built torrent parses");
    assert_eq!(again.name, m.name);
    assert_eq!(again.files, m.files);
    assert_eq!(again.pieces, m.pieces);
    assert_eq!(again.piece_length, m.piece_length);
    assert_eq!(again.announce, m.announce);
    assert_eq!(again.multi_file, m.multi_file);
    assert_eq!(again.total_length, m.total_length);
});
