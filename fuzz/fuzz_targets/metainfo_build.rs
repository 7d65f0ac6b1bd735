//! `build_torrent` then `Metainfo::parse`: "the output always parses back".
//!
//! Input: a name, a file list, a piece length and an announce URL, chosen by the
//! fuzzer (hashes are filler: parsing does not check data). Properties: when the
//! encoder accepts, the parser accepts its output with the same fields; the two
//! apply the same rules, so the encoder refuses exactly what the parser would.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::metainfo::{self, Metainfo, MetainfoError};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    files: Vec<(Vec<String>, u32)>,
    /// Multiplies file lengths, to reach the u64 and i64 limits.
    scale: u8,
    piece_length: u32,
    announce: Option<String>,
}

/// Most piece hashes a case may need (bounds the memory of one run).
const MAX_HASHES: u64 = 1 << 16;

fuzz_target!(|input: Input| {
    let shift = u32::from(input.scale % 40);
    let files: Vec<(Vec<String>, u64)> = input
        .files
        .iter()
        .take(64)
        .map(|(p, l)| (p.clone(), u64::from(*l) << shift))
        .collect();
    let total = files
        .iter()
        .try_fold(0u64, |acc, (_, l)| acc.checked_add(*l));
    let piece_length = input.piece_length;
    let hashes = match (total, piece_length) {
        (Some(t), pl) if pl > 0 => {
            let n = t.div_ceil(u64::from(pl));
            if n > MAX_HASHES {
                return;
            }
            (0..n).map(|i| [i as u8; 20]).collect::<Vec<_>>()
        }
        _ => Vec::new(),
    };
    let built = metainfo::build_torrent(
        &input.name,
        &files,
        piece_length,
        &hashes,
        input.announce.as_deref(),
    );
    let bytes = match built {
        Ok(b) => b,
        Err(
            MetainfoError::BadPath { .. }
            | MetainfoError::BadPieceLength(_)
            | MetainfoError::NoFiles
            | MetainfoError::Empty
            | MetainfoError::DuplicatePath(_)
            | MetainfoError::TotalTooLarge
            | MetainfoError::TooManyFiles(_)
            | MetainfoError::PieceCountMismatch { .. },
        ) => return,
        Err(e) => panic!("unexpected build error {e:?}"),
    };
    let m = Metainfo::parse(&bytes).unwrap_or_else(|e| panic!("built torrent refused: {e}"));
    assert_eq!(m.name, input.name);
    assert_eq!(m.piece_length, piece_length);
    assert_eq!(m.pieces, hashes);
    assert_eq!(m.announce, input.announce);
    let single = matches!(&files[..], [(p, _)] if p.is_empty());
    assert_eq!(m.multi_file, !single);
    let got: Vec<(Vec<String>, u64)> = m.files.iter().map(|f| (f.path.clone(), f.length)).collect();
    if single {
        assert_eq!(got, vec![(Vec::new(), files[0].1)]);
    } else {
        assert_eq!(got, files);
    }
    assert_eq!(Some(m.total_length), total);
});
